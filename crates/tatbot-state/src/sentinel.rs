//! High availability: finding the Redis master through Redis Sentinel, and noticing when it moves.
//!
//! A [`SentinelTarget`] in the [`crate::ManagerConfig`] replaces the fixed address. Every
//! connection the library makes (the manager's shared one, the producer's writer, subscriptions,
//! followers, parameter watches) asks a `Locator` for the master's client when it (re)connects:
//! the locator asks each Sentinel in turn for `SENTINEL GET-MASTER-ADDR-BY-NAME`, and accepts an
//! answer only after the named server itself says `ROLE` is `master` (a Sentinel that has not
//! seen a failover yet, or an old master that came back, can name a replica).
//!
//! The `redis` crate's own `sentinel` module does the lookup, but its clients are fixed once
//! built, and its `ConnectionManager` keeps dialling the old master after a failover (redis-rs
//! issue #1438); it also has no per-call timeout. So the lookup is done here, with the connect
//! and response timeouts of the manager, and the callers decide when to look again: after an I/O
//! error, a timeout, a `READONLY` reply (an old master that was demoted to a replica), a
//! `NOREPLICAS` reply (a master cut off from its replicas, which may be on the losing side of a
//! partition), and whenever a Sentinel announces `+switch-master`
//! (`watch_switches`) so they move within milliseconds of the Sentinels' decision.
//!
//! Without a Sentinel target the locator hands out the fixed client and nothing changes.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::connection::{Endpoint, ManagerConfig};
use crate::error::{Error, Result};

/// The master name the shipped Sentinel config monitors.
pub const DEFAULT_MASTER_NAME: &str = "tatbot";
/// The default Sentinel port.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// The Sentinel channel that announces a new master: `NAME OLD_IP OLD_PORT NEW_IP NEW_PORT`.
pub const SWITCH_MASTER_CHANNEL: &str = "+switch-master";

/// Where the Sentinels are and which master they watch.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The Sentinels, tried in order; each carries the Sentinels' password (`requirepass` of the
    /// Sentinels, which is not the password of Redis), if any.
    pub sentinels: Vec<Endpoint>,
    /// The name the Sentinels monitor the master under (`sentinel monitor NAME ...`).
    pub master_name: String,
}

/// `master NAME via host:port,host:port`, never a password.
impl fmt::Display for SentinelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "master {} via sentinel ", self.master_name)?;
        for (index, sentinel) in self.sentinels.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{sentinel}")?;
        }
        Ok(())
    }
}

/// Redacts the passwords (through [`Endpoint`]'s `Debug`).
impl fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .finish()
    }
}

/// Finds the master's client for every (re)connect; cheap to clone (clones share the last
/// master found). See the module docs.
#[derive(Clone)]
pub(crate) struct Locator {
    inner: Arc<LocatorInner>,
}

struct LocatorInner {
    /// The fixed address without Sentinel; with it, the master's credentials (user, password).
    endpoint: Endpoint,
    sentinel: Option<SentinelTarget>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// The master last found (the fixed endpoint without Sentinel), for logs and displays.
    current: Mutex<Endpoint>,
    /// Which Sentinel (its place in the target's list) named it: [`Locator::confirm`] asks
    /// that one first.
    named_by: Mutex<usize>,
}

impl Locator {
    pub(crate) fn new(config: &ManagerConfig) -> Locator {
        Locator {
            inner: Arc::new(LocatorInner {
                endpoint: config.endpoint.clone(),
                sentinel: config.sentinel.clone(),
                connect_timeout: config.connect_timeout,
                response_timeout: config.response_timeout,
                current: Mutex::new(config.endpoint.clone()),
                named_by: Mutex::new(0),
            }),
        }
    }

    /// The Sentinel target, when there is one.
    pub(crate) fn sentinel(&self) -> Option<&SentinelTarget> {
        self.inner.sentinel.as_ref()
    }

    /// The master last found (or the fixed endpoint).
    pub(crate) fn current(&self) -> Endpoint {
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What to name in an error: the fixed endpoint, or the Sentinel target.
    pub(crate) fn describe(&self) -> String {
        match &self.inner.sentinel {
            Some(target) => target.to_string(),
            None => self.inner.endpoint.to_string(),
        }
    }

    /// A client for the master: the fixed one, or the one the Sentinels name now (verified).
    ///
    /// # Errors
    ///
    /// [`Error::NoMaster`] when no Sentinel names a server that says it is the master.
    pub(crate) async fn client(&self) -> Result<redis::Client> {
        let endpoint = match &self.inner.sentinel {
            None => self.inner.endpoint.clone(),
            Some(target) => self.locate(target).await?,
        };
        let target = endpoint.to_string();
        redis::Client::open(endpoint.connection_info()?).map_err(|err| Error::from_connect(&target, err))
    }

    /// A connection of its own to the master ([`Locator::client`]), for a caller that blocks on
    /// it (a watch, a live read): connected within `connect_timeout`, each answer waited for
    /// `response_timeout`.
    pub(crate) async fn dedicated(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
        operation: &'static str,
    ) -> Result<redis::aio::MultiplexedConnection> {
        let client = self.client().await?;
        let target = self.current().to_string();
        crate::connection::dedicated(&client, &target, connect_timeout, response_timeout, operation).await
    }

    /// Asks every Sentinel in turn, and returns the first master that confirms its role.
    async fn locate(&self, target: &SentinelTarget) -> Result<Endpoint> {
        let mut tried = Vec::with_capacity(target.sentinels.len());
        for (place, sentinel) in target.sentinels.iter().enumerate() {
            let checked = async {
                let named = self.named_by(sentinel, &target.master_name).await?;
                self.says_master(sentinel, &named).await?;
                // A server frozen while its replica was promoted still says "master" when it
                // wakes: the role may have come after the switch, so the Sentinel that named it
                // must still name it.
                match self.ask(sentinel, &target.master_name).await {
                    Ok(Some(again)) if again == named => Ok(named),
                    Ok(again) => {
                        let now = again.map_or_else(|| "no master".to_owned(), |again| again.to_string());
                        Err(format!("{sentinel} named {named}, then {now}"))
                    }
                    Err(err) => Err(format!("{sentinel}: {}", err.report())),
                }
            };
            let named = match checked.await {
                Ok(named) => named,
                Err(why) => {
                    tried.push(why);
                    continue;
                }
            };
            *self.inner.named_by.lock().unwrap_or_else(PoisonError::into_inner) = place;
            let mut current = self.inner.current.lock().unwrap_or_else(PoisonError::into_inner);
            if *current != named {
                tracing::info!(master = %named, sentinel = %sentinel, "redis master located through sentinel");
                current.clone_from(&named);
            }
            return Ok(named);
        }
        Err(Error::NoMaster {
            master_name: target.master_name.clone(),
            tried: tried.join("; "),
        })
    }

    /// Checks, after a connection to `host:port` was opened and found to be a master, that no
    /// Sentinel names another server that says it is the master now: a connection that took
    /// its time (the server was frozen meanwhile, and a replica promoted) must not take writes.
    /// The Sentinel that named the master is asked first, and the check ends at the first one
    /// that names `host:port` again; a Sentinel that names a server that is not a master (a
    /// stale one, as [`Locator::client`] allows for) or cannot be asked is passed over. Always
    /// true without Sentinel.
    ///
    /// This narrows the window of a stale master, it does not close it: a Sentinel that has
    /// not heard of a switch yet (they learn it from each other within seconds) still names the
    /// old master, and `min-replicas-to-write` bounds what that master accepts (docs/HA.md).
    ///
    /// # Errors
    ///
    /// [`Error::NoMaster`] when a Sentinel names another master, or none names this one.
    pub(crate) async fn confirm(&self, host: &str, port: u16) -> Result<()> {
        let Some(target) = &self.inner.sentinel else {
            return Ok(());
        };
        let first = *self.inner.named_by.lock().unwrap_or_else(PoisonError::into_inner);
        let count = target.sentinels.len();
        let mut tried = Vec::with_capacity(count);
        for sentinel in (0..count).map(|offset| &target.sentinels[(first + offset) % count]) {
            let why = match self.named_by(sentinel, &target.master_name).await {
                Ok(named) if named.host == host && named.port == port => return Ok(()),
                Ok(named) => match self.says_master(sentinel, &named).await {
                    Ok(()) => {
                        let connected = Endpoint {
                            host: host.to_owned(),
                            port,
                            ..self.inner.endpoint.clone()
                        };
                        return Err(Error::NoMaster {
                            master_name: target.master_name.clone(),
                            tried: format!("{sentinel} names {named}, a master now, not {connected}"),
                        });
                    }
                    Err(why) => why,
                },
                Err(why) => why,
            };
            tried.push(why);
        }
        Err(Error::NoMaster {
            master_name: target.master_name.clone(),
            tried: tried.join("; "),
        })
    }

    /// The master `sentinel` names; or, to report, that it names none or could not be asked.
    async fn named_by(&self, sentinel: &Endpoint, master_name: &str) -> std::result::Result<Endpoint, String> {
        match self.ask(sentinel, master_name).await {
            Ok(Some(named)) => Ok(named),
            Ok(None) => Err(format!("{sentinel} does not know master {master_name}")),
            Err(err) => Err(format!("{sentinel}: {}", err.report())),
        }
    }

    /// Whether `named` (as `sentinel` named it) says its role is `master`; or, to report, what
    /// it said or why it could not be asked.
    async fn says_master(&self, sentinel: &Endpoint, named: &Endpoint) -> std::result::Result<(), String> {
        match self.role(named).await {
            Ok(role) if role == "master" => Ok(()),
            Ok(role) => Err(format!("{sentinel} names {named}, which is a {role}")),
            Err(err) => Err(format!("{sentinel} names {named}: {}", err.report())),
        }
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on one Sentinel.
    async fn ask(&self, sentinel: &Endpoint, master_name: &str) -> Result<Option<Endpoint>> {
        let mut connection = self.open(sentinel_info(sentinel)?, &sentinel.to_string()).await?;
        let named: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master_name)
            .query_async(&mut connection)
            .await
            .map_err(|err| Error::from_redis("sentinel get-master-addr-by-name", err))?;
        Ok(named.map(|(host, port)| Endpoint {
            host,
            port,
            ..self.inner.endpoint.clone()
        }))
    }

    /// What a data server says its role is (`master`, `slave`, `sentinel`).
    async fn role(&self, endpoint: &Endpoint) -> Result<String> {
        let mut connection = self.open(endpoint.connection_info()?, &endpoint.to_string()).await?;
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut connection)
            .await
            .map_err(|err| Error::from_redis("role", err))?;
        match role.first() {
            Some(redis::Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Some(redis::Value::SimpleString(text)) => Ok(text.clone()),
            _ => Ok("server with an unknown role".to_owned()),
        }
    }

    async fn open(&self, info: ConnectionInfo, target: &str) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(info).map_err(|err| Error::from_connect(target, err))?;
        crate::connection::dedicated(
            &client,
            target,
            self.inner.connect_timeout,
            self.inner.response_timeout,
            "connect",
        )
        .await
    }
}

/// The connection info of a Sentinel: RESP2 (what every Sentinel speaks) and its own password.
fn sentinel_info(sentinel: &Endpoint) -> Result<ConnectionInfo> {
    let mut redis_info = RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP2);
    if let Some(username) = &sentinel.username {
        redis_info = redis_info.set_username(username);
    }
    if let Some(password) = &sentinel.password {
        redis_info = redis_info.set_password(password);
    }
    let info = ConnectionAddr::Tcp(sentinel.host.clone(), sentinel.port)
        .into_connection_info()
        .map_err(|err| Error::from_connect(&sentinel.to_string(), err))?;
    Ok(info.set_redis_settings(redis_info))
}

/// True when a reply or failure means the master may have moved and it must be looked up
/// again: the connection broke or timed out, or the server is no longer a writable master.
pub(crate) fn is_failover_signal(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || matches!(err.code(), Some("READONLY" | "NOREPLICAS" | "MASTERDOWN" | "LOADING"))
}

/// Subscribes to [`SWITCH_MASTER_CHANNEL`] on one Sentinel after another (whichever answers) and
/// calls `on_switch` for each announcement about `target`'s master, with the old master's
/// address, until `shutdown`.
///
/// A lost Sentinel connection is made again with capped backoff, on the next Sentinel; an
/// announcement missed meanwhile is covered by the callers' own error handling.
pub(crate) async fn watch_switches(
    target: SentinelTarget,
    on_switch: impl Fn(Option<(String, u16)>),
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let prefix = format!("{} ", target.master_name);
    for sentinel in target.sentinels.iter().cycle() {
        let listen = async {
            let info = sentinel_info(sentinel)?;
            let client = redis::Client::open(info).map_err(|err| Error::from_connect(&sentinel.to_string(), err))?;
            let mut pubsub = client
                .get_async_pubsub()
                .await
                .map_err(|err| Error::from_connect(&sentinel.to_string(), err))?;
            pubsub
                .subscribe(SWITCH_MASTER_CHANNEL)
                .await
                .map_err(|err| Error::from_redis("subscribe +switch-master", err))?;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().unwrap_or_default();
                if let Some(addresses) = payload.strip_prefix(&prefix) {
                    tracing::warn!(announcement = %payload, "sentinel switched the redis master");
                    // `<master name> <old ip> <old port> <new ip> <new port>`
                    let mut parts = addresses.split(' ');
                    let old = parts.next().zip(parts.next().and_then(|port| port.parse().ok()));
                    on_switch(old.map(|(host, port)| (host.to_owned(), port)));
                }
            }
            Ok::<(), Error>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = listen => {
                if let Err(err) = outcome {
                    tracing::debug!(sentinel = %sentinel, error = %err.report(), "cannot listen to a sentinel");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// What one Sentinel says, for `doctor`.
#[derive(Debug)]
pub struct SentinelView {
    /// The Sentinel asked.
    pub sentinel: Endpoint,
    /// The master address it names (`None`: it does not know the master name), or why it could
    /// not be asked.
    pub master: Result<Option<(String, u16)>>,
    /// Its `SENTINEL CKQUORUM` answer: `Ok` with the text when the quorum and a majority for a
    /// failover are reachable, `Err` with the refusal otherwise.
    pub quorum: std::result::Result<String, String>,
}

/// Asks every Sentinel of `target` for the master's address and for `SENTINEL CKQUORUM`, each
/// within `limit`. Never fails as a whole: each answer or failure is in its [`SentinelView`].
pub async fn inspect(target: &SentinelTarget, limit: Duration) -> Vec<SentinelView> {
    let mut views = Vec::with_capacity(target.sentinels.len());
    for sentinel in &target.sentinels {
        let ask = async {
            let client = redis::Client::open(sentinel_info(sentinel)?)
                .map_err(|err| Error::from_connect(&sentinel.to_string(), err))?;
            let settings = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(limit))
                .set_response_timeout(Some(limit));
            let mut connection = client
                .get_multiplexed_async_connection_with_config(&settings)
                .await
                .map_err(|err| Error::from_connect(&sentinel.to_string(), err))?;
            let master: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(&target.master_name)
                .query_async(&mut connection)
                .await
                .map_err(|err| Error::from_redis("sentinel get-master-addr-by-name", err))?;
            let quorum: redis::RedisResult<String> = redis::cmd("SENTINEL")
                .arg("CKQUORUM")
                .arg(&target.master_name)
                .query_async(&mut connection)
                .await;
            let quorum = quorum.map_err(|err| err.detail().map_or_else(|| err.to_string(), str::to_owned));
            Ok::<_, Error>((master, quorum))
        };
        let (master, quorum) = match tokio::time::timeout(limit * 2, ask).await {
            Ok(Ok((master, quorum))) => (Ok(master), quorum),
            Ok(Err(err)) => {
                let text = err.report().to_string();
                (Err(err), Err(text))
            }
            Err(_) => (
                Err(Error::Timeout {
                    operation: "sentinel",
                    after: limit * 2,
                }),
                Err("no answer".to_owned()),
            ),
        };
        views.push(SentinelView {
            sentinel: sentinel.clone(),
            master,
            quorum,
        });
    }
    views
}

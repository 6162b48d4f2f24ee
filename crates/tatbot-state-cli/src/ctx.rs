//! Global flags and what every subcommand derives from them: the resolved Redis target, this
//! node's id, and a connected [`StateManager`].
//!
//! Flags are parsed by clap into [`GlobalArgs`] (stage one) and validated here into typed values
//! (stage two), the way ripgrep splits low-level and high-level arguments.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tatbot_state::config::{self, ConfigInputs, RedisTarget};
use tatbot_state::{Endpoint, ManagerConfig, NodeId, StateManager};

/// Flags shared by every subcommand, in redis-cli style (`-h` is the host; help is `--help`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global Options")]
pub struct GlobalArgs {
    /// Redis host name or IP [default: from config, else 127.0.0.1]
    #[arg(short = 'h', long, global = true)]
    pub host: Option<String>,
    /// Redis port [default: from config, else 6379]
    #[arg(short = 'p', long, global = true)]
    pub port: Option<u16>,
    /// Redis password (prefer REDIS_PASSWORD: flags show up in `ps`)
    #[arg(short = 'a', long, global = true)]
    pub password: Option<Secret>,
    /// Redis ACL user name
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Hydra conf dir, or its redis/default.yaml
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Env file with REDIS_* lines [default: TATBOT_ENV_FILE, else /nfs/tatbot/.env if present]
    #[arg(long, global = true, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// A Sentinel to find the Redis master through, HOST[:PORT] (repeatable; turns Sentinel mode on) [default: REDIS_SENTINELS, else the YAML's sentinels]
    #[arg(long = "sentinel", global = true, value_name = "HOST:PORT")]
    pub sentinels: Vec<String>,
    /// The master name the Sentinels monitor [default: REDIS_MASTER_NAME, else the YAML's master_name, else tatbot]
    #[arg(long, global = true, value_name = "NAME")]
    pub master_name: Option<String>,
    /// The Sentinels' password, not Redis's (prefer REDIS_SENTINEL_PASSWORD: flags show up in `ps`)
    #[arg(long, global = true, value_name = "PASSWORD")]
    pub sentinel_password: Option<Secret>,
    /// This node's id [default: the host name]
    #[arg(long, global = true, value_name = "ID")]
    pub node_id: Option<String>,
    /// Print JSON instead of text (one object, or one per line for streams)
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug)
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl GlobalArgs {
    /// The config resolver's inputs: flags plus the real process environment.
    pub fn config_inputs(&self) -> ConfigInputs {
        let mut inputs = ConfigInputs::from_env();
        inputs.config.clone_from(&self.config);
        inputs.env_file.clone_from(&self.env_file);
        inputs.host.clone_from(&self.host);
        inputs.port = self.port;
        inputs.password = self.password.clone().map(Secret::into_inner);
        inputs.username.clone_from(&self.user);
        inputs
    }

    /// Resolves the Redis target (precedence: flags > environment > env file > YAML > default).
    pub fn target(&self) -> anyhow::Result<RedisTarget> {
        Ok(config::resolve(&self.config_inputs(), &config::resolve_host_system)?)
    }

    /// The target a command's `--redis URL` names (`demo`, `bench`), parsed by the library's
    /// resolver as if it were `REDIS_URL`; of the machine's settings only the conf dir (its
    /// node inventory) still counts.
    pub fn endpoint_from_url(&self, url: &str) -> anyhow::Result<Endpoint> {
        let mut inputs = self.config_inputs();
        let mut env = BTreeMap::from([("REDIS_URL".to_owned(), url.to_owned())]);
        if let Some(conf_dir) = inputs.env.get(config::CONF_DIR_VAR) {
            env.insert(config::CONF_DIR_VAR.to_owned(), conf_dir.clone());
        }
        inputs.env = env;
        // An empty env file: the URL names the whole target, so no REDIS_* line may override it.
        inputs.env_file = Some(PathBuf::from("/dev/null"));
        inputs.host = None;
        inputs.port = None;
        inputs.password = None;
        inputs.username = None;
        let target = config::resolve(&inputs, &config::resolve_host_system).context("--redis (read as REDIS_URL)")?;
        Ok(Endpoint::from(&target))
    }

    /// The Sentinel settings, when any layer names a Sentinel (same precedence as the target).
    pub fn sentinel(&self) -> anyhow::Result<Option<config::SentinelSettings>> {
        let flags = config::SentinelInputs {
            sentinels: self.sentinels.clone(),
            master_name: self.master_name.clone(),
            sentinel_password: self.sentinel_password.clone().map(Secret::into_inner),
        };
        Ok(config::resolve_sentinel(&self.config_inputs(), &flags)?)
    }

    /// The manager config for `endpoint`: with Sentinel settings, and `endpoint` being the
    /// configured target (not a private server a command started), the master is found
    /// through the Sentinels and followed across failovers.
    fn manager_config(&self, endpoint: Endpoint) -> anyhow::Result<(ManagerConfig, String)> {
        let mut shown = endpoint.to_string();
        let mut config = ManagerConfig::new(endpoint, self.node_id()?);
        // Whether `endpoint` is the configured target matters only with Sentinel settings;
        // without them the target (env file, YAML, host lookup) is not resolved a second time.
        if let Some(settings) = self.sentinel()?
            && Endpoint::from(&self.target()?) == config.endpoint
        {
            let target = settings.target();
            shown = target.to_string();
            config.sentinel = Some(target);
        }
        Ok((config, shown))
    }

    /// `--node-id`, or the host name made into a valid id.
    pub fn node_id(&self) -> anyhow::Result<NodeId> {
        match &self.node_id {
            Some(id) => Ok(NodeId::new(id.as_str())?),
            None => Ok(hostname_node_id()),
        }
    }

    /// A manager connected to the resolved target.
    pub async fn manager(&self) -> anyhow::Result<StateManager> {
        let target = self.target()?;
        let endpoint = Endpoint::from(&target);
        self.manager_for(endpoint).await
    }

    /// A manager for a daemon: when Redis is not up yet, waits for it (logging each wait)
    /// until Ctrl-C or SIGTERM; refused credentials and bad configuration still fail at once.
    ///
    /// # Errors
    ///
    /// As [`GlobalArgs::manager`], except that an unreachable server is waited out.
    pub async fn manager_waiting(&self) -> anyhow::Result<StateManager> {
        let target = self.target()?;
        let (config, shown) = self.manager_config(Endpoint::from(&target))?;
        let stop = tatbot_state::CancellationToken::new();
        let signal = stop.clone();
        let signals = tokio::spawn(async move {
            crate::signal::shutdown_signal().await;
            signal.cancel();
        });
        let connected = StateManager::connect_waiting(config, &stop).await;
        signals.abort();
        connected.map_err(|err| connect_error(err, &shown))
    }

    /// A manager for a server (`viz`, `mcp`): it serves at once, Redis or not. When Redis is
    /// not up yet, the manager connects on first use (reads fail until then) and a background
    /// task logs the wait ("waiting for Redis at HOST:PORT: why; retry in N s") until Redis
    /// answers; refused credentials and bad configuration still fail at once.
    ///
    /// # Errors
    ///
    /// As [`GlobalArgs::manager`], except that an unreachable server is not an error.
    pub async fn manager_serving(&self) -> anyhow::Result<StateManager> {
        let (manager, waiting) = self.manager_or_lazy().await?;
        if let Some(config) = waiting {
            tokio::spawn(async move {
                // Nothing cancels the wait: it ends when Redis answers or the process exits.
                let forever = tatbot_state::CancellationToken::new();
                let shown = config.endpoint.to_string();
                if let Err(err) = StateManager::connect_waiting(config, &forever).await {
                    tracing::error!("{}", crate::report::line(&connect_error(err, &shown)));
                }
            });
        }
        Ok(manager)
    }

    /// One connection attempt: the connected manager, or, when Redis is unreachable, a lazy
    /// one with the config to wait for it with (the monitor shows the wait on screen instead
    /// of logging it over the screen).
    ///
    /// # Errors
    ///
    /// As [`GlobalArgs::manager`], except that an unreachable server is not an error.
    pub async fn manager_or_lazy(&self) -> anyhow::Result<(StateManager, Option<ManagerConfig>)> {
        let target = self.target()?;
        let (config, shown) = self.manager_config(Endpoint::from(&target))?;
        match StateManager::connect(config.clone()).await {
            Ok(manager) => Ok((manager, None)),
            Err(err) if err.is_connection_error() => {
                let manager = StateManager::connect_lazy(config.clone()).map_err(|err| connect_error(err, &shown))?;
                Ok((manager, Some(config)))
            }
            Err(err) => Err(connect_error(err, &shown)),
        }
    }

    /// A manager for the resolved target (through the Sentinels when configured) that
    /// connects on first use: for a writer that retries on its own, such as a heartbeat.
    ///
    /// # Errors
    ///
    /// Bad configuration.
    pub fn manager_lazy(&self) -> anyhow::Result<StateManager> {
        let (config, shown) = self.manager_config(Endpoint::from(&self.target()?))?;
        StateManager::connect_lazy(config).map_err(|err| connect_error(err, &shown))
    }

    /// A manager connected to `endpoint`, with this node's id.
    pub async fn manager_for(&self, endpoint: Endpoint) -> anyhow::Result<StateManager> {
        self.manager_configured(endpoint, |_| {}).await
    }

    /// As [`GlobalArgs::manager_for`], with `configure` changing the manager config first (a
    /// robot's session lease, for example).
    ///
    /// # Errors
    ///
    /// As [`GlobalArgs::manager`].
    pub async fn manager_configured(
        &self,
        endpoint: Endpoint,
        configure: impl FnOnce(&mut ManagerConfig),
    ) -> anyhow::Result<StateManager> {
        let (mut config, shown) = self.manager_config(endpoint)?;
        configure(&mut config);
        StateManager::connect(config)
            .await
            .map_err(|err| connect_error(err, &shown))
    }
}

/// A failed connect as an `anyhow` error, with "connecting to Redis at HOST:PORT" as context
/// unless the library's message already names the target (so the line says it once).
pub fn connect_error(err: tatbot_state::Error, shown: &str) -> anyhow::Error {
    match err {
        tatbot_state::Error::Unreachable { .. }
        | tatbot_state::Error::Auth { .. }
        | tatbot_state::Error::NotRedis { .. } => err.into(),
        other => anyhow::Error::new(other).context(format!("connecting to Redis at {shown}")),
    }
}

/// The host name with characters a node id may not hold replaced by `-`, at most 64 bytes.
pub fn hostname_node_id() -> NodeId {
    let raw = gethostname::gethostname().to_string_lossy().into_owned();
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(tatbot_state::MAX_ID_LEN)
        .collect();
    // A cleaned, non-empty, truncated name always validates; "node" is the fallback for an
    // empty host name.
    NodeId::new(cleaned).unwrap_or_else(|_| NodeId::new("node").expect("\"node\" is a valid id"))
}

/// Parses a `--bind` value: an `ADDR:PORT` such as `127.0.0.1:8080` or `[::1]:8080`, or a
/// `HOST:PORT` such as `localhost:8080`, resolved now. A host with several addresses binds the
/// first IPv4 one (`localhost` is `127.0.0.1` rather than `::1`, which is what a browser
/// opening `http://localhost:8080/` tries first as well when both answer).
///
/// # Errors
///
/// A one-line message with an example when the text is not `HOST:PORT` or the host does not
/// resolve.
pub fn parse_bind(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let hint = "use ADDR:PORT or HOST:PORT, such as 127.0.0.1:8080 or localhost:8080";
    if text
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(format!("{text:?} has no port; {hint}"));
    }
    let addresses: Vec<std::net::SocketAddr> = text
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {text:?}: {err}; {hint}"))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address; {hint}"))
}

/// Binds a listener on `address`, turning "address already in use" into a message that says
/// what to do about it.
///
/// # Errors
///
/// The bind failed; the message names the address and, when it is taken, how to find who
/// holds it and how to pick another port.
pub async fn bind_listener(address: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => Ok(listener),
        // The way out is the final line's hint (`report::hint_for`), said once.
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            Err(anyhow::Error::new(err).context(format!("cannot serve the {what} on {address}")))
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!("listening on {address}"))),
    }
}

/// A secret flag's value (a password, a token): taken as given, shown by `Debug` as
/// `"<redacted>"`, so the derived `Debug` of the flag structs never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret itself, owned.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt("<redacted>", f)
    }
}

#[cfg(test)]
mod secret_tests {
    use clap::Parser as _;

    use crate::cmd::Cli;

    /// Passwords and tokens given as flags never show in the parsed flags' `Debug`.
    #[test]
    fn secrets_are_redacted_in_debug() {
        for args in [
            &[
                "tatbot-state",
                "-a",
                "hunter2",
                "--sentinel-password",
                "s3ntinel",
                "viz",
                "--token",
                "t0ken",
            ][..],
            &[
                "tatbot-state",
                "-a",
                "hunter2",
                "--sentinel-password",
                "s3ntinel",
                "mcp",
                "--token",
                "t0ken",
            ],
        ] {
            let cli = Cli::try_parse_from(args).expect("the flags parse");
            let shown = format!("{cli:?}");
            for secret in ["hunter2", "s3ntinel", "t0ken"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;

    /// Addresses parse as they are, host names resolve, and a missing port is refused.
    #[test]
    fn bind_accepts_host_names() {
        assert_eq!(parse_bind("127.0.0.1:8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(parse_bind("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert_eq!(parse_bind("localhost:8080").unwrap().to_string(), "127.0.0.1:8080");
        assert!(parse_bind("localhost").unwrap_err().contains("has no port"));
        assert!(
            parse_bind("no-such-host.invalid:80")
                .unwrap_err()
                .starts_with("cannot resolve")
        );
    }
}

//! Resolution of the Redis target that every tatbot binary connects to.
//!
//! The host, port, password and username are layered from five sources, lowest
//! precedence first: the built-in default, the Hydra YAML `redis/default.yaml`
//! in the conf dir, an env file, the process environment and explicit flags.
//! Each resolved field remembers which source won so that a `config` command
//! can explain the result.
//!
//! After the layering, a host name that does not resolve (the robot's HOME and
//! EDGE networks have no shared DNS) is looked up in the node inventory
//! `nodes.yaml` in the same conf dir, and its IP is used instead. A conf dir with
//! the inventory but no `redis/default.yaml` still counts, for the inventory.
//!
//! Keys of the Redis YAML that are neither read here nor Hydra's own (`defaults`,
//! `_target_`, ...) are logged as warnings, with the likely intended key.
//!
//! A Sentinel target (`sentinels`, `master_name`, `sentinel_password`) is resolved beside it,
//! from the same sources, by [`resolve_sentinel`] (module `ha`).
//!
//! [`resolve`] never reads the process environment or the real working
//! directory itself: everything comes in through [`ConfigInputs`], which keeps
//! it testable without mutating global state.

mod ha;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_yaml_ng::Value;

pub use self::ha::{SentinelInputs, SentinelSettings, resolve_sentinel};

use crate::redacted::Redacted;

/// Host used when no source names one.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// Port used when no source names one; also the port of a `redis://` URL without one.
pub const DEFAULT_PORT: u16 = 6379;

/// Env file read when it exists and neither `--env-file` nor `TATBOT_ENV_FILE` names one.
pub const DEFAULT_ENV_FILE: &str = "/nfs/tatbot/.env";

/// Environment variable naming the Hydra conf dir.
pub const CONF_DIR_VAR: &str = "TATBOT_CONF_DIR";

/// Environment variable naming the env file.
pub const ENV_FILE_VAR: &str = "TATBOT_ENV_FILE";

/// File name of the node inventory inside the conf dir.
pub const INVENTORY_FILE: &str = "nodes.yaml";

/// The environment keys that carry Redis settings; every other key is ignored.
const REDIS_URL: &str = "REDIS_URL";
const REDIS_HOST: &str = "REDIS_HOST";
const REDIS_PORT: &str = "REDIS_PORT";
const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
const REDIS_USERNAME: &str = "REDIS_USERNAME";
const REDIS_KEYS: [&str; 5] = [REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_USERNAME];

const PORT_PROBLEM: &str = "is not a port (1-65535)";
const URL_FORM: &str = "expected redis://[user[:pass]@]host[:port][/db]";

/// Everything [`resolve`] looks at, passed in explicitly so that tests need no
/// process-wide state.
#[derive(Clone)]
pub struct ConfigInputs {
    /// The `--config` flag: a conf dir, or the `redis/default.yaml` file itself.
    pub config: Option<PathBuf>,
    /// The `--env-file` flag.
    pub env_file: Option<PathBuf>,
    /// The `--host` flag.
    pub host: Option<String>,
    /// The `--port` flag.
    pub port: Option<u16>,
    /// The `--password` flag; an empty string means "no password".
    pub password: Option<String>,
    /// The `--username` flag; an empty string means "no username".
    pub username: Option<String>,
    /// Snapshot of the process environment.
    pub env: BTreeMap<String, String>,
    /// Directory that relative paths and `./src/conf` are taken from.
    pub cwd: PathBuf,
    /// Home directory, used for `~/tatbot/src/conf`; `None` skips that candidate.
    pub home: Option<PathBuf>,
    /// Env file read when it exists and nothing names another; normally [`DEFAULT_ENV_FILE`];
    /// an empty path means none.
    pub default_env_file: PathBuf,
}

impl ConfigInputs {
    /// Builds inputs from the given flags plus the real process environment,
    /// working directory and `$HOME`. Prefer [`ConfigInputs::from_env`] and the builder
    /// methods, which cannot swap two flags.
    ///
    /// Environment entries that are not valid UTF-8 are skipped rather than
    /// panicking, since none of the variables this module reads can use them.
    pub fn from_process(
        config: Option<PathBuf>,
        env_file: Option<PathBuf>,
        host: Option<String>,
        port: Option<u16>,
        password: Option<String>,
        username: Option<String>,
    ) -> Self {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        // A deleted working directory should not stop a binary from starting;
        // relative lookups then simply find nothing.
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let home = env.get("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        Self {
            config,
            env_file,
            host,
            port,
            password,
            username,
            env,
            cwd,
            home,
            default_env_file: PathBuf::from(DEFAULT_ENV_FILE),
        }
    }
}

impl ConfigInputs {
    /// The process's environment, working directory and `$HOME`, and no flags: what every
    /// binary resolves before its flags apply. Add flags with the builder methods.
    pub fn from_env() -> Self {
        Self::from_process(None, None, None, None, None, None)
    }

    /// As the `--config` flag: a conf dir, or the `redis/default.yaml` file itself.
    #[must_use]
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// As the `--env-file` flag.
    #[must_use]
    pub fn env_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.env_file = Some(path.into());
        self
    }

    /// As the `-h`/`--host` flag.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// As the `-p`/`--port` flag.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// As the `-a`/`--password` flag; an empty string means "no password".
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// As the `--user` flag; an empty string means "no username".
    #[must_use]
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Resolves the target as the CLI does, host names through the system resolver.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the bad file, variable or flag.
    pub fn resolve(&self) -> Result<RedisTarget, ConfigError> {
        resolve(self, &resolve_host_system)
    }

    /// Resolves the target with `lookup` telling whether a host name resolves (for tests).
    ///
    /// # Errors
    ///
    /// As [`ConfigInputs::resolve`].
    pub fn resolve_with(&self, lookup: &dyn Fn(&str) -> bool) -> Result<RedisTarget, ConfigError> {
        resolve(self, lookup)
    }
}

impl Default for ConfigInputs {
    /// No flags, an empty environment, cwd `.`, no home and [`DEFAULT_ENV_FILE`].
    fn default() -> Self {
        Self {
            config: None,
            env_file: None,
            host: None,
            port: None,
            password: None,
            username: None,
            env: BTreeMap::new(),
            cwd: PathBuf::from("."),
            home: None,
            default_env_file: PathBuf::from(DEFAULT_ENV_FILE),
        }
    }
}

impl fmt::Debug for ConfigInputs {
    /// Shows the password flag as redacted and only the names of the
    /// environment variables, since their values may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigInputs")
            .field("config", &self.config)
            .field("env_file", &self.env_file)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &Redacted(&self.password))
            .field("username", &self.username)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("home", &self.home)
            .field("default_env_file", &self.default_env_file)
            .finish()
    }
}

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The Hydra YAML file at this path.
    ConfFile(PathBuf),
    /// The env file at this path.
    EnvFile(PathBuf),
    /// The process environment variable of this name.
    Env(String),
    /// The command-line flag of this name, such as `--host`.
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::ConfFile(path) => write!(f, "{}", path.display()),
            Self::EnvFile(path) => write!(f, "env file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A value together with the source that supplied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where the value came from.
    pub source: Source,
}

/// Set when the host did not resolve and the node inventory supplied its IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryFallback {
    /// The host name that was looked up in the inventory.
    pub name: String,
    /// The IP the inventory gives for it.
    pub ip: IpAddr,
    /// The inventory file that was used.
    pub inventory: PathBuf,
}

/// The resolved Redis target.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Host name or IP as configured.
    pub host: Sourced<String>,
    /// TCP port.
    pub port: Sourced<u16>,
    /// Password, or `None` for none.
    pub password: Sourced<Option<String>>,
    /// ACL username, or `None` for the default user.
    pub username: Sourced<Option<String>>,
    /// The conf dir that was used, if any.
    pub conf_dir: Option<PathBuf>,
    /// The env file that was read, if any.
    pub env_file: Option<PathBuf>,
    /// What to actually connect to: the host, or the inventory IP when the host does not resolve.
    pub connect_host: String,
    /// Set when the node inventory fallback applied.
    pub inventory_fallback: Option<InventoryFallback>,
}

impl RedisTarget {
    /// The target a `redis://[user[:pass]@]host[:port][/db]` URL names, and nothing else (no
    /// YAML, env file or environment); its fields' source is "environment variable REDIS_URL",
    /// the form the same URL takes in the environment.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when the URL is malformed.
    pub fn from_url(url: &str) -> Result<RedisTarget, ConfigError> {
        let inputs = ConfigInputs {
            env: BTreeMap::from([(REDIS_URL.to_owned(), url.to_owned())]),
            // Only the URL counts: no default env file, no conf dir.
            default_env_file: PathBuf::new(),
            ..ConfigInputs::default()
        };
        inputs.resolve()
    }

    /// The URL to hand to a Redis client: `redis://[user:pass@]connect_host:port/`.
    ///
    /// User and password are percent-encoded and IPv6 hosts are bracketed.
    /// The URL contains the password, so it must not be logged; use
    /// [`RedisTarget::display_redacted`] for that.
    pub fn redis_url(&self) -> String {
        let mut url = String::from("redis://");
        let user = self.username.value.as_deref();
        let pass = self.password.value.as_deref();
        if user.is_some() || pass.is_some() {
            if let Some(user) = user {
                url.push_str(&percent_encode(user));
            }
            if let Some(pass) = pass {
                url.push(':');
                url.push_str(&percent_encode(pass));
            }
            url.push('@');
        }
        url.push_str(&bracket_host(&self.connect_host));
        url.push(':');
        url.push_str(&self.port.value.to_string());
        url.push('/');
        url
    }

    /// A one-line summary safe for logs, such as `127.0.0.1:6379 (no password)`.
    ///
    /// It never contains the password, only whether one is set.
    pub fn display_redacted(&self) -> String {
        let mut out = String::new();
        if let Some(user) = &self.username.value {
            out.push_str(user);
            out.push('@');
        }
        out.push_str(&bracket_host(&self.connect_host));
        out.push(':');
        out.push_str(&self.port.value.to_string());
        out.push_str(" (");
        if let Some(fallback) = &self.inventory_fallback {
            out.push_str(&format!("host {} via node inventory, ", fallback.name));
        }
        out.push_str(if self.password.value.is_some() {
            "password set"
        } else {
            "no password"
        });
        out.push(')');
        out
    }

    /// Rows of `(field, value, source)` for a `config` command, with the
    /// password redacted.
    ///
    /// Besides the four fields there is a `connect` row (what is dialled and
    /// why) and `conf dir` and `env file` rows whose source column is empty.
    pub fn describe(&self) -> Vec<(&'static str, String, String)> {
        let none = || "(none)".to_string();
        let connect_source = match &self.inventory_fallback {
            Some(fallback) => format!("node inventory {}", fallback.inventory.display()),
            None if self.connect_host.parse::<IpAddr>().is_ok() => "ip literal".to_string(),
            None => "dns".to_string(),
        };
        vec![
            ("host", self.host.value.clone(), self.host.source.to_string()),
            ("port", self.port.value.to_string(), self.port.source.to_string()),
            (
                "password",
                match self.password.value {
                    Some(_) => "(set)".to_string(),
                    None => none(),
                },
                self.password.source.to_string(),
            ),
            (
                "username",
                self.username.value.clone().unwrap_or_else(none),
                self.username.source.to_string(),
            ),
            ("connect", self.connect_host.clone(), connect_source),
            (
                "conf dir",
                self.conf_dir.as_ref().map_or_else(none, |p| p.display().to_string()),
                String::new(),
            ),
            (
                "env file",
                self.env_file.as_ref().map_or_else(none, |p| p.display().to_string()),
                String::new(),
            ),
        ]
    }
}

impl fmt::Display for RedisTarget {
    /// Same as [`RedisTarget::display_redacted`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_redacted())
    }
}

impl fmt::Debug for RedisTarget {
    /// Like a derived `Debug`, but the password value is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = Sourced {
            value: Redacted(&self.password.value),
            source: self.password.source.clone(),
        };
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &password)
            .field("username", &self.username)
            .field("conf_dir", &self.conf_dir)
            .field("env_file", &self.env_file)
            .field("connect_host", &self.connect_host)
            .field("inventory_fallback", &self.inventory_fallback)
            .finish()
    }
}

/// Why the Redis target could not be resolved.
///
/// `value` fields hold the offending value as it should be shown: strings
/// quoted, numbers bare, and secrets (passwords, the password part of a URL)
/// redacted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A path named by a flag or an environment variable does not exist.
    #[error("{what}: {} does not exist", path.display())]
    NotFound {
        /// What named the path, such as `--config` or `environment variable TATBOT_CONF_DIR`.
        what: String,
        /// The missing path.
        path: PathBuf,
    },
    /// An explicitly named conf dir holds no `redis/default.yaml`.
    #[error(
        "{what}: {} has no redis/default.yaml (point it at a hydra conf dir such as src/conf, or at the yaml file itself)",
        path.display()
    )]
    NotConfDir {
        /// What named the dir.
        what: String,
        /// The dir.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        error: io::Error,
    },
    /// A YAML file does not parse.
    #[error("{}: invalid yaml: {}", path.display(), yaml_message(message, *line, *column))]
    Yaml {
        /// The file.
        path: PathBuf,
        /// One-based line of the problem, when the parser knows it.
        line: Option<usize>,
        /// One-based column of the problem, when the parser knows it.
        column: Option<usize>,
        /// The parser's message.
        message: String,
    },
    /// A field of the Redis YAML has a bad value.
    #[error("{}: field \"{field}\": {value} {problem}", path.display())]
    ConfField {
        /// The file.
        path: PathBuf,
        /// The field name.
        field: String,
        /// The offending value, rendered for display.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A line of an env file is neither a comment nor `[export] KEY=value`.
    #[error("{} line {line}: {problem}", path.display())]
    EnvFileSyntax {
        /// The env file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// A Redis variable in an env file has a bad value.
    #[error("{} line {line}: {key}: {value} {problem}", path.display())]
    EnvFileValue {
        /// The env file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// The variable name.
        key: String,
        /// The offending value, rendered for display.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A Redis variable in the process environment has a bad value.
    #[error("environment variable {var}: {value} {problem}")]
    EnvValue {
        /// The variable name.
        var: String,
        /// The offending value, rendered for display.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A flag has a bad value.
    #[error("flag {flag}: {value} {problem}")]
    FlagValue {
        /// The flag, such as `--port`.
        flag: &'static str,
        /// The offending value, rendered for display.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The node inventory is malformed.
    #[error("{}: {}field \"{field}\": {value} {problem}", path.display(), entry_prefix(entry))]
    Inventory {
        /// The inventory file.
        path: PathBuf,
        /// The entry, such as `nodes[5] "eek"`, or `None` for a top-level problem.
        entry: Option<String>,
        /// The field name.
        field: String,
        /// The offending value, rendered for display.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The host does not resolve and the node inventory cannot stand in for DNS.
    #[error("{}", unresolvable_message(host, inventory.as_deref(), *inventory_found))]
    Unresolvable {
        /// The host name that did not resolve.
        host: String,
        /// Where the host name came from: a binary's hint tells a user who passed a flag to
        /// pass an IP, and anyone else to set the environment variable.
        host_source: Source,
        /// The inventory path that was consulted or looked for, if there was a conf dir.
        inventory: Option<PathBuf>,
        /// Whether that inventory file exists.
        inventory_found: bool,
    },
}

/// Adds the parser's location to its message unless the message already has it.
fn yaml_message(message: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) if !message.contains("line") => {
            format!("{message} at line {line} column {column}")
        }
        _ => message.to_string(),
    }
}

fn entry_prefix(entry: &Option<String>) -> String {
    entry.as_ref().map_or_else(String::new, |e| format!("{e}: "))
}

fn unresolvable_message(host: &str, inventory: Option<&Path>, inventory_found: bool) -> String {
    let why = match (inventory, inventory_found) {
        (Some(path), true) => format!("{} has no entry for it", path.display()),
        (Some(path), false) => format!("no node inventory was found at {}", path.display()),
        (None, _) => "no node inventory was found (no conf dir)".to_string(),
    };
    format!("host {host:?} does not resolve and {why}")
}

/// Resolves the Redis target from `inputs`.
///
/// `lookup` tells whether a host name resolves; binaries pass
/// [`resolve_host_system`]. It is not called for IP literals.
pub fn resolve(inputs: &ConfigInputs, lookup: &dyn Fn(&str) -> bool) -> Result<RedisTarget, ConfigError> {
    let mut fields = Fields::default();

    let conf = find_conf(inputs)?;
    if let Some(yaml) = conf.as_ref().and_then(|conf| conf.yaml.as_deref()) {
        fields.overlay(read_conf_yaml(yaml)?);
    }

    let env_file = find_env_file(inputs)?;
    if let Some(path) = &env_file {
        let vars = read_env_file(path)?;
        fields.overlay(EnvVars { file: Some(path), vars }.layer()?);
    }

    let process = EnvVars {
        file: None,
        vars: REDIS_KEYS
            .iter()
            .filter_map(|&key| inputs.env.get(key).map(|v| (key, (v.clone(), 0))))
            .collect(),
    };
    fields.overlay(process.layer()?);
    fields.overlay(flag_layer(inputs)?);

    let conf_dir = conf.map(|c| c.dir);
    let (connect_host, inventory_fallback) = connect_target(&fields.host, conf_dir.as_deref(), lookup)?;

    let target = RedisTarget {
        host: fields.host,
        port: fields.port,
        password: fields.password,
        username: fields.username,
        conf_dir,
        env_file,
        connect_host,
        inventory_fallback,
    };
    tracing::debug!(
        target = %target.display_redacted(),
        host_source = %target.host.source,
        "resolved redis target"
    );
    Ok(target)
}

/// Resolves the Redis target from `inputs` as [`resolve`] does, but takes the host as it is:
/// no lookup, no node inventory. For `config` to show what was resolved when the host does
/// not resolve ([`ConfigError::Unresolvable`]).
///
/// # Errors
///
/// As [`resolve`], except that an unresolvable host is not one.
pub fn resolve_unchecked(inputs: &ConfigInputs) -> Result<RedisTarget, ConfigError> {
    resolve(inputs, &|_| true)
}

/// Whether `host` resolves through the system resolver (hosts file, DNS, mDNS).
pub fn resolve_host_system(host: &str) -> bool {
    (host, 0)
        .to_socket_addrs()
        .map(|mut addrs| addrs.next().is_some())
        .unwrap_or(false)
}

/// The four fields as layered so far.
struct Fields {
    host: Sourced<String>,
    port: Sourced<u16>,
    password: Sourced<Option<String>>,
    username: Sourced<Option<String>>,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            host: Sourced {
                value: DEFAULT_HOST.to_string(),
                source: Source::Default,
            },
            port: Sourced {
                value: DEFAULT_PORT,
                source: Source::Default,
            },
            password: Sourced {
                value: None,
                source: Source::Default,
            },
            username: Sourced {
                value: None,
                source: Source::Default,
            },
        }
    }
}

impl Fields {
    fn overlay(&mut self, layer: Layer) {
        if let Some(host) = layer.host {
            self.host = host;
        }
        if let Some(port) = layer.port {
            self.port = port;
        }
        if let Some(password) = layer.password {
            self.password = password;
        }
        if let Some(username) = layer.username {
            self.username = username;
        }
    }
}

/// What one source sets; `None` leaves the lower layer's value in place.
#[derive(Default)]
struct Layer {
    host: Option<Sourced<String>>,
    port: Option<Sourced<u16>>,
    password: Option<Sourced<Option<String>>>,
    username: Option<Sourced<Option<String>>>,
}

/// The conf dir in use and the Redis YAML inside it, if it has one (a conf dir with only
/// the node inventory still serves as the inventory).
struct ConfLocation {
    dir: PathBuf,
    yaml: Option<PathBuf>,
}

fn redis_yaml_in(dir: &Path) -> PathBuf {
    dir.join("redis").join("default.yaml")
}

fn find_conf(inputs: &ConfigInputs) -> Result<Option<ConfLocation>, ConfigError> {
    if let Some(config) = &inputs.config {
        return explicit_conf(inputs.cwd.join(config), "--config").map(Some);
    }
    if let Some(dir) = non_empty_var(inputs, CONF_DIR_VAR) {
        let what = format!("environment variable {CONF_DIR_VAR}");
        return explicit_conf(inputs.cwd.join(dir), &what).map(Some);
    }
    // The implicit candidates only count when they hold the Redis YAML or the node
    // inventory, so an unrelated project's `src/conf` under the working directory is
    // passed over.
    let implicit = [
        Some(inputs.cwd.join("src").join("conf")),
        inputs
            .home
            .as_ref()
            .map(|home| home.join("tatbot").join("src").join("conf")),
    ];
    let implicit: Vec<PathBuf> = implicit.into_iter().flatten().collect();
    for dir in &implicit {
        let yaml = redis_yaml_in(dir);
        if yaml.is_file() {
            return Ok(Some(ConfLocation {
                dir: dir.clone(),
                yaml: Some(yaml),
            }));
        }
    }
    // No Redis YAML anywhere: a conf dir with the inventory still serves it.
    Ok(implicit
        .into_iter()
        .find(|dir| dir.join(INVENTORY_FILE).is_file())
        .map(|dir| ConfLocation { dir, yaml: None }))
}

fn explicit_conf(path: PathBuf, what: &str) -> Result<ConfLocation, ConfigError> {
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(ConfigError::NotFound {
                what: what.to_string(),
                path,
            });
        }
        Err(error) => return Err(ConfigError::Read { path, error }),
    };
    if meta.is_dir() {
        let yaml = redis_yaml_in(&path);
        if yaml.is_file() {
            return Ok(ConfLocation {
                dir: path,
                yaml: Some(yaml),
            });
        }
        if path.join(INVENTORY_FILE).is_file() {
            return Ok(ConfLocation { dir: path, yaml: None });
        }
        return Err(ConfigError::NotConfDir {
            what: what.to_string(),
            path,
        });
    }
    // The file normally sits at `X/redis/default.yaml`, making `X` the conf
    // dir; a file elsewhere takes its own directory as the conf dir so that a
    // `nodes.yaml` beside it still serves as the inventory.
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if parent.file_name().is_some_and(|name| name == "redis") {
        parent.parent().map(Path::to_path_buf).unwrap_or(parent)
    } else {
        parent
    };
    Ok(ConfLocation { dir, yaml: Some(path) })
}

/// An environment variable from the snapshot, treating an empty value as unset
/// so that `TATBOT_CONF_DIR=` can switch a setting off.
fn non_empty_var<'a>(inputs: &'a ConfigInputs, var: &str) -> Option<&'a str> {
    inputs.env.get(var).map(String::as_str).filter(|v| !v.is_empty())
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn parse_yaml(path: &Path, text: &str) -> Result<Value, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|error| {
        let location = error.location();
        ConfigError::Yaml {
            path: path.to_path_buf(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            message: error.to_string(),
        }
    })
}

/// Renders a YAML value the way it would be written: strings quoted, scalars bare.
fn render_yaml(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => yaml_kind(other).to_string(),
    }
}

/// Names a YAML value's kind without showing it, for values that may be secret.
fn yaml_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn read_conf_yaml(path: &Path) -> Result<Layer, ConfigError> {
    let text = read_file(path)?;
    let map = match parse_yaml(path, &text)? {
        // An empty file sets nothing, like an empty Hydra group file would.
        Value::Null => return Ok(Layer::default()),
        Value::Mapping(map) => map,
        other => {
            return Err(ConfigError::Yaml {
                path: path.to_path_buf(),
                line: None,
                column: None,
                message: format!(
                    "expected a mapping with host/port/password, found {}",
                    yaml_kind(&other)
                ),
            });
        }
    };
    warn_unknown_keys(path, &map);
    let source = Source::ConfFile(path.to_path_buf());
    let field_error = |field: &str, value: String, problem: &str| ConfigError::ConfField {
        path: path.to_path_buf(),
        field: field.to_string(),
        value,
        problem: problem.to_string(),
    };
    let mut layer = Layer::default();

    // A null host or port means "not set here", so the default shows through.
    match map.get("host") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let host = validate_host(s).map_err(|p| field_error("host", format!("{s:?}"), p))?;
            layer.host = Some(Sourced {
                value: host,
                source: source.clone(),
            });
        }
        Some(other) => {
            return Err(field_error("host", render_yaml(other), "is not a host name"));
        }
    }

    match map.get("port") {
        None | Some(Value::Null) => {}
        Some(value) => {
            let port = match value {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|&n| n != 0),
                // A quoted number is what an env-style config would produce, so
                // it is accepted; anything else in quotes is not a port.
                Value::String(s) => parse_port(s).ok(),
                _ => None,
            };
            let port = port.ok_or_else(|| field_error("port", render_yaml(value), PORT_PROBLEM))?;
            layer.port = Some(Sourced {
                value: port,
                source: source.clone(),
            });
        }
    }

    for (field, secret) in [("password", true), ("username", false)] {
        let value = match map.get(field) {
            None => continue,
            Some(Value::Null) => None,
            Some(Value::String(s)) if s.contains("${") => {
                let shown = if secret {
                    "a string".to_string()
                } else {
                    format!("{s:?}")
                };
                return Err(field_error(
                    field,
                    shown,
                    "is a hydra interpolation, which is not supported (write the value itself)",
                ));
            }
            Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
            Some(other) => {
                let shown = if secret {
                    yaml_kind(other).to_string()
                } else {
                    render_yaml(other)
                };
                return Err(field_error(field, shown, "is not a string (quote it)"));
            }
        };
        let sourced = Some(Sourced {
            value,
            source: source.clone(),
        });
        if secret {
            layer.password = sourced;
        } else {
            layer.username = sourced;
        }
    }
    Ok(layer)
}

/// The keys of `redis/default.yaml` this module reads.
const CONF_KEYS: [&str; 7] = [
    "host",
    "port",
    "password",
    "username",
    "sentinels",
    "master_name",
    "sentinel_password",
];

/// Hydra's own keys, which a Hydra config may carry and this module ignores silently.
const HYDRA_KEYS: [&str; 7] = [
    "defaults",
    "hydra",
    "_target_",
    "_recursive_",
    "_convert_",
    "_partial_",
    "_args_",
];

/// Logs a warning naming each key of the Redis YAML that is neither read here nor Hydra's,
/// with the key it most likely meant when one is close: a misspelled `prot: 6380` is
/// otherwise ignored without a word, and the default port used.
///
/// Each warning is logged once per process, however often the file is read (`config`
/// resolves twice when the host does not resolve).
fn warn_unknown_keys(path: &Path, map: &serde_yaml_ng::Mapping) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<(PathBuf, String)>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for key in map.keys() {
        let Some(message) = unknown_key_message(key) else {
            continue;
        };
        // Only inserts happen under this lock: a poisoned set is whole.
        let mut warned = WARNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.insert((path.to_path_buf(), message.clone())) {
            tracing::warn!(file = %path.display(), "{message}");
        }
    }
}

/// What to say about `key` of the Redis YAML: `None` for a known or Hydra key.
fn unknown_key_message(key: &Value) -> Option<String> {
    let key = match key {
        Value::String(key) => key.as_str(),
        other => return Some(format!("ignoring the key {} (not a name)", render_yaml(other))),
    };
    if CONF_KEYS.contains(&key) || HYDRA_KEYS.contains(&key) {
        return None;
    }
    let closest = CONF_KEYS
        .iter()
        .map(|known| (strsim::damerau_levenshtein(&key.to_ascii_lowercase(), known), *known))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    let known = CONF_KEYS.join(", ");
    Some(match closest {
        Some((_, known)) => format!("ignoring the unknown key {key:?}; did you mean {known:?}?"),
        None => format!("ignoring the unknown key {key:?} (this file sets {known})"),
    })
}

/// Checks a host name or IP literal; `[v6]` brackets are removed.
fn validate_host(host: &str) -> Result<String, &'static str> {
    if host.is_empty() {
        return Err("is not a host name (empty)");
    }
    if host.contains("${") {
        return Err("is a hydra interpolation, which is not supported (write the value itself)");
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| "is not an IPv6 address");
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(host.to_string());
    }
    if host.contains(':') {
        return Err("is not a host name (give the port separately)");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/@?#[]\\".contains(c))
    {
        return Err("is not a host name");
    }
    Ok(host.to_string())
}

fn parse_port(text: &str) -> Result<u16, &'static str> {
    text.parse::<u16>().ok().filter(|&p| p != 0).ok_or(PORT_PROBLEM)
}

fn find_env_file(inputs: &ConfigInputs) -> Result<Option<PathBuf>, ConfigError> {
    let explicit = match (&inputs.env_file, non_empty_var(inputs, ENV_FILE_VAR)) {
        (Some(path), _) => Some((inputs.cwd.join(path), "--env-file".to_string())),
        (None, Some(path)) => Some((inputs.cwd.join(path), format!("environment variable {ENV_FILE_VAR}"))),
        (None, None) => None,
    };
    if let Some((path, what)) = explicit {
        return match fs::metadata(&path) {
            Ok(_) => Ok(Some(path)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(ConfigError::NotFound { what, path }),
            Err(error) => Err(ConfigError::Read { path, error }),
        };
    }
    if inputs.default_env_file.as_os_str().is_empty() {
        // No default env file (as `RedisTarget::from_url` asks).
        return Ok(None);
    }
    let default = inputs.cwd.join(&inputs.default_env_file);
    match default.try_exists() {
        Ok(true) => Ok(Some(default)),
        Ok(false) => Ok(None),
        // The default lives on NFS, which may be unmounted or unreadable on a
        // given node; that is not the user's mistake, so it is skipped.
        Err(error) => {
            tracing::debug!(path = %default.display(), %error, "skipping default env file");
            Ok(None)
        }
    }
}

/// Reads an env file, checking every line, and keeps the Redis keys with the
/// line each was last set on.
fn read_env_file(path: &Path) -> Result<BTreeMap<&'static str, (String, usize)>, ConfigError> {
    let text = read_file(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut vars = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let parsed = parse_env_line(line).map_err(|problem| ConfigError::EnvFileSyntax {
            path: path.to_path_buf(),
            line: number,
            problem: problem.to_string(),
        })?;
        if let Some((key, value)) = parsed
            && let Some(&key) = REDIS_KEYS.iter().find(|&&k| k == key)
        {
            // Later lines win, as they would when the file is sourced by a shell.
            vars.insert(key, (value, number));
        }
    }
    Ok(vars)
}

/// Parses one env file line into a key and value; `None` for blank and comment
/// lines. The error never quotes the line, since it may hold a secret.
fn parse_env_line(line: &str) -> Result<Option<(&str, String)>, &'static str> {
    const EXPECTED: &str = "expected KEY=value or export KEY=value";
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let rest = match line.strip_prefix("export") {
        Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
        _ => line,
    };
    let (key, raw) = rest.split_once('=').ok_or(EXPECTED)?;
    let key = key.trim_end();
    let mut chars = key.chars();
    let valid_key = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key {
        return Err(EXPECTED);
    }
    let raw = raw.trim_start();
    let (value, after) = if let Some(body) = raw.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated single quote")?;
        (body[..end].to_string(), &body[end + 1..])
    } else if let Some(body) = raw.strip_prefix('"') {
        parse_double_quoted(body)?
    } else {
        // As in a shell, `#` starts a comment only after whitespace, so values
        // like `pa#ss` are kept whole.
        let end = raw
            .char_indices()
            .find(|&(i, c)| c == '#' && raw[..i].ends_with(char::is_whitespace))
            .map_or(raw.len(), |(i, _)| i);
        (raw[..end].trim_end().to_string(), "")
    };
    let after = after.trim_start();
    if !after.is_empty() && !after.starts_with('#') {
        return Err("unexpected text after the closing quote");
    }
    Ok(Some((key, value)))
}

/// Parses the body of a double-quoted value (after the opening quote), handling
/// the escapes a shell honours inside double quotes.
fn parse_double_quoted(body: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, next @ ('"' | '\\' | '$' | '`'))) => value.push(next),
                Some((_, next)) => {
                    value.push('\\');
                    value.push(next);
                }
                None => value.push('\\'),
            },
            other => value.push(other),
        }
    }
    Err("unterminated double quote")
}

/// Redis variables from one env-like source: an env file or the process
/// environment. The line number is 0 for the process environment.
struct EnvVars<'a> {
    file: Option<&'a Path>,
    vars: BTreeMap<&'static str, (String, usize)>,
}

impl EnvVars<'_> {
    fn source(&self, key: &str) -> Source {
        match self.file {
            Some(path) => Source::EnvFile(path.to_path_buf()),
            None => Source::Env(key.to_string()),
        }
    }

    fn error(&self, key: &str, line: usize, value: String, problem: &str) -> ConfigError {
        match self.file {
            Some(path) => ConfigError::EnvFileValue {
                path: path.to_path_buf(),
                line,
                key: key.to_string(),
                value,
                problem: problem.to_string(),
            },
            None => ConfigError::EnvValue {
                var: key.to_string(),
                value,
                problem: problem.to_string(),
            },
        }
    }

    /// Applies `REDIS_URL` first, then lets the individual variables override its parts.
    fn layer(&self) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        if let Some((url, line)) = self.vars.get(REDIS_URL) {
            let parsed = parse_redis_url(url)
                .map_err(|problem| self.error(REDIS_URL, *line, format!("{:?}", redact_url(url)), &problem))?;
            let source = self.source(REDIS_URL);
            // A URL names a whole target, so the parts it leaves out take their
            // defaults instead of leaking through from lower layers.
            layer.host = Some(Sourced {
                value: parsed.host,
                source: source.clone(),
            });
            layer.port = Some(Sourced {
                value: parsed.port.unwrap_or(DEFAULT_PORT),
                source: source.clone(),
            });
            layer.password = Some(Sourced {
                value: parsed.password,
                source: source.clone(),
            });
            layer.username = Some(Sourced {
                value: parsed.username,
                source,
            });
        }
        if let Some((host, line)) = self.vars.get(REDIS_HOST) {
            let value =
                validate_host(host).map_err(|problem| self.error(REDIS_HOST, *line, format!("{host:?}"), problem))?;
            layer.host = Some(Sourced {
                value,
                source: self.source(REDIS_HOST),
            });
        }
        if let Some((port, line)) = self.vars.get(REDIS_PORT) {
            let value =
                parse_port(port).map_err(|problem| self.error(REDIS_PORT, *line, format!("{port:?}"), problem))?;
            layer.port = Some(Sourced {
                value,
                source: self.source(REDIS_PORT),
            });
        }
        // An empty password or username means "none", deliberately overriding
        // whatever a lower layer set.
        if let Some((password, _)) = self.vars.get(REDIS_PASSWORD) {
            layer.password = Some(Sourced {
                value: Some(password.clone()).filter(|p| !p.is_empty()),
                source: self.source(REDIS_PASSWORD),
            });
        }
        if let Some((username, _)) = self.vars.get(REDIS_USERNAME) {
            layer.username = Some(Sourced {
                value: Some(username.clone()).filter(|u| !u.is_empty()),
                source: self.source(REDIS_USERNAME),
            });
        }
        Ok(layer)
    }
}

fn flag_layer(inputs: &ConfigInputs) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    if let Some(host) = &inputs.host {
        let value = validate_host(host).map_err(|problem| ConfigError::FlagValue {
            flag: "--host",
            value: format!("{host:?}"),
            problem: problem.to_string(),
        })?;
        layer.host = Some(Sourced {
            value,
            source: Source::Flag("--host"),
        });
    }
    if let Some(port) = inputs.port {
        if port == 0 {
            return Err(ConfigError::FlagValue {
                flag: "--port",
                value: port.to_string(),
                problem: PORT_PROBLEM.to_string(),
            });
        }
        layer.port = Some(Sourced {
            value: port,
            source: Source::Flag("--port"),
        });
    }
    if let Some(password) = &inputs.password {
        layer.password = Some(Sourced {
            value: Some(password.clone()).filter(|p| !p.is_empty()),
            source: Source::Flag("--password"),
        });
    }
    if let Some(username) = &inputs.username {
        layer.username = Some(Sourced {
            value: Some(username.clone()).filter(|u| !u.is_empty()),
            source: Source::Flag("--user"),
        });
    }
    Ok(layer)
}

/// The endpoint a `redis://[user[:pass]@]host[:port][/0]` URL names (port 6379 when left out),
/// for commands that take a second server as a URL (`tatbot-state replay --into`).
///
/// # Errors
///
/// A one-line message naming the problem (scheme, database, host, port).
pub fn endpoint_from_url(url: &str) -> Result<crate::Endpoint, String> {
    let parsed = parse_redis_url(url).map_err(|problem| format!("{} {problem}", redact_url(url)))?;
    let mut endpoint = crate::Endpoint::new(parsed.host, parsed.port.unwrap_or(DEFAULT_PORT));
    endpoint.username = parsed.username;
    endpoint.password = parsed.password;
    Ok(endpoint)
}

/// The parts of a `redis://` URL.
#[derive(Debug, PartialEq, Eq)]
struct ParsedUrl {
    host: String,
    port: Option<u16>,
    username: Option<String>,
    password: Option<String>,
}

/// Parses `redis://[user[:pass]@]host[:port][/db]`; the error is the problem
/// text that follows the (redacted) URL in a message.
fn parse_redis_url(url: &str) -> Result<ParsedUrl, String> {
    let bad = |detail: &str| format!("is not a redis URL: {detail}");
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad(URL_FORM))?;
    match scheme.to_ascii_lowercase().as_str() {
        "redis" => {}
        "rediss" => return Err(bad("TLS not supported (rediss://); use a redis:// URL")),
        _ => return Err(bad(&format!("scheme {scheme:?} not supported; {URL_FORM}"))),
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail.contains(['?', '#']) {
        return Err(bad("query parameters and fragments are not supported"));
    }
    // Only database 0 exists in tatbot's layout; silently connecting to 0 when
    // the URL asked for another would hide a misconfiguration.
    let db = tail.strip_prefix('/').unwrap_or(tail);
    if !db.is_empty() {
        match db.parse::<u32>() {
            Ok(0) => {}
            Ok(n) => {
                return Err(bad(&format!("database {n} not supported (tatbot uses database 0)")));
            }
            Err(_) => return Err(bad(&format!("database {db:?} is not a number"))),
        }
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (userinfo, None),
            };
            let user = percent_decode(user).map_err(|d| bad(&format!("{d} in the username")))?;
            let pass = pass
                .map(percent_decode)
                .transpose()
                .map_err(|d| bad(&format!("{d} in the password")))?;
            (Some(user).filter(|u| !u.is_empty()), pass.filter(|p| !p.is_empty()))
        }
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (inner, after) = bracketed.split_once(']').ok_or_else(|| bad("unclosed [ in the host"))?;
        let ip = inner
            .parse::<Ipv6Addr>()
            .map_err(|_| bad(&format!("{inner:?} is not an IPv6 address")))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| bad(URL_FORM))?),
        };
        (ip.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let host = validate_host(&host).map_err(|p| bad(&format!("host {host:?} {p}")))?;
    // An empty port (`host:`) means the scheme's default, as in RFC 3986.
    let port = match port {
        None | Some("") => None,
        Some(port) => Some(parse_port(port).map_err(|p| bad(&format!("port {port:?} {p}")))?),
    };
    Ok(ParsedUrl {
        host,
        port,
        username,
        password,
    })
}

/// Replaces the password part of a URL-like value with `***` so that error
/// messages can show the rest.
fn redact_url(url: &str) -> String {
    let (prefix, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{prefix}{user}:***@{hostport}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// RFC 3986 unreserved characters are the only ones a URL's userinfo keeps as they are.
const USERINFO_KEEPS: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Decodes `%XX` escapes; unlike a browser, a `%` without two hex digits after it is an error,
/// since a password with a stray `%` was most likely not encoded at all.
fn percent_decode(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(byte_idx, &byte)| {
        byte == b'%'
            && !bytes
                .get(byte_idx + 1..byte_idx + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err("bad percent-encoding");
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| "percent-encoding that is not UTF-8")
}

/// Percent-encodes everything except RFC 3986 unreserved characters, which is
/// always safe inside the userinfo of a URL.
fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, USERINFO_KEEPS).to_string()
}

/// Wraps IPv6 literals in brackets for use before `:port`.
fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Decides what to dial: an IP literal or a resolving name as is, otherwise
/// the node inventory's IP for that name.
fn connect_target(
    host: &Sourced<String>,
    conf_dir: Option<&Path>,
    lookup: &dyn Fn(&str) -> bool,
) -> Result<(String, Option<InventoryFallback>), ConfigError> {
    let name = &host.value;
    if name.parse::<IpAddr>().is_ok() || lookup(name) {
        return Ok((name.clone(), None));
    }
    let inventory = conf_dir.map(|dir| dir.join(INVENTORY_FILE));
    let unresolvable = |inventory: Option<PathBuf>, inventory_found: bool| ConfigError::Unresolvable {
        host: name.clone(),
        host_source: host.source.clone(),
        inventory,
        inventory_found,
    };
    let Some(path) = inventory else {
        return Err(unresolvable(None, false));
    };
    if !path.is_file() {
        return Err(unresolvable(Some(path), false));
    }
    let Some(ip) = inventory_ip(&path, name)? else {
        return Err(unresolvable(Some(path), true));
    };
    tracing::warn!(
        host = %name,
        ip = %ip,
        inventory = %path.display(),
        "redis host does not resolve; using its ip from the node inventory"
    );
    Ok((
        ip.to_string(),
        Some(InventoryFallback {
            name: name.clone(),
            ip,
            inventory: path,
        }),
    ))
}

/// Finds `name` in the inventory. Every entry is checked, so a malformed
/// inventory is reported the first time it is needed rather than only when the
/// broken entry happens to be the one asked for.
fn inventory_ip(path: &Path, name: &str) -> Result<Option<IpAddr>, ConfigError> {
    let text = read_file(path)?;
    let error = |entry: Option<String>, field: &str, value: String, problem: &str| ConfigError::Inventory {
        path: path.to_path_buf(),
        entry,
        field: field.to_string(),
        value,
        problem: problem.to_string(),
    };
    let nodes = match parse_yaml(path, &text)? {
        Value::Null => return Ok(None),
        Value::Mapping(map) => match map.get("nodes") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Sequence(nodes)) => nodes.clone(),
            Some(other) => return Err(error(None, "nodes", render_yaml(other), "is not a list")),
        },
        other => {
            return Err(ConfigError::Yaml {
                path: path.to_path_buf(),
                line: None,
                column: None,
                message: format!("expected a mapping with a nodes list, found {}", yaml_kind(&other)),
            });
        }
    };
    let mut found = None;
    for (index, node) in nodes.iter().enumerate() {
        let Value::Mapping(node) = node else {
            return Err(error(
                Some(format!("nodes[{index}]")),
                "name",
                yaml_kind(node).to_string(),
                "is not a node (expected a mapping with name and ip)",
            ));
        };
        let node_name = match node.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                return Err(error(
                    Some(format!("nodes[{index}]")),
                    "name",
                    render_yaml(other),
                    "is not a node name",
                ));
            }
            None => {
                return Err(error(
                    Some(format!("nodes[{index}]")),
                    "name",
                    "(missing)".to_string(),
                    "is not a node name",
                ));
            }
        };
        let entry = Some(format!("nodes[{index}] {node_name:?}"));
        let ip = match node.get("ip") {
            Some(Value::String(s)) => s.parse::<IpAddr>().ok(),
            _ => None,
        };
        let Some(ip) = ip else {
            let shown = node.get("ip").map_or_else(|| "(missing)".to_string(), render_yaml);
            return Err(error(entry, "ip", shown, "is not an IP address"));
        };
        // Host names are case-insensitive, so `EEK` and `eek` are one node.
        if found.is_none() && node_name.eq_ignore_ascii_case(name) {
            found = Some(ip);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// A lookup that fails the test if it is ever called.
    fn never(host: &str) -> bool {
        panic!("lookup must not be called, but was called for {host:?}")
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("path has a parent")).expect("create dirs");
        fs::write(path, text).expect("write file");
    }

    /// Inputs with nothing configured, rooted in `dir`, whose default env file does not exist.
    fn base(dir: &Path) -> ConfigInputs {
        ConfigInputs {
            cwd: dir.to_path_buf(),
            default_env_file: dir.join("no-such-default.env"),
            ..ConfigInputs::default()
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write_redis_yaml(conf: &Path, text: &str) -> PathBuf {
        let path = conf.join("redis").join("default.yaml");
        write(&path, text);
        path
    }

    fn err(inputs: &ConfigInputs) -> String {
        match resolve(inputs, &never) {
            Ok(target) => panic!("expected an error, got {target:?}"),
            Err(error) => error.to_string(),
        }
    }

    const HYDRA_YAML: &str = "# @package _global_\ndefaults:\n  - _self_\n_target_: tatbot.Redis\nhost: \"10.1.2.3\"\nport: 6380\npassword: null\nextra: {a: 1}\n";

    /// With nothing configured, the defaults apply and every source is `default`.
    #[test]
    fn defaults_when_nothing_configured() {
        let dir = TempDir::new().expect("tempdir");
        let t = resolve(&base(dir.path()), &never).expect("resolve");
        assert_eq!(t.host.value, DEFAULT_HOST);
        assert_eq!(t.port.value, DEFAULT_PORT);
        assert_eq!(t.password.value, None);
        assert_eq!(t.username.value, None);
        for source in [&t.host.source, &t.port.source, &t.password.source, &t.username.source] {
            assert_eq!(source, &Source::Default);
        }
        assert_eq!(t.conf_dir, None);
        assert_eq!(t.env_file, None);
        assert_eq!(t.connect_host, "127.0.0.1");
        assert_eq!(t.redis_url(), "redis://127.0.0.1:6379/");
    }

    /// The YAML overrides the defaults and Hydra extras (`defaults:`, `_target_`, comments, unknown keys) are ignored.
    #[test]
    fn yaml_overrides_defaults_ignoring_hydra_extras() {
        let dir = TempDir::new().expect("tempdir");
        let yaml = write_redis_yaml(&dir.path().join("src/conf"), HYDRA_YAML);
        let t = resolve(&base(dir.path()), &never).expect("resolve");
        assert_eq!(t.host.value, "10.1.2.3");
        assert_eq!(t.port.value, 6380);
        assert_eq!(t.password.value, None);
        assert_eq!(t.host.source, Source::ConfFile(yaml.clone()));
        assert_eq!(t.port.source, Source::ConfFile(yaml.clone()));
        assert_eq!(t.password.source, Source::ConfFile(yaml));
        assert_eq!(t.username.source, Source::Default);
    }

    /// `./src/conf` is found relative to the given cwd, not the process cwd.
    #[test]
    fn cwd_src_conf_is_found() {
        let dir = TempDir::new().expect("tempdir");
        let cwd = dir.path().join("work");
        write_redis_yaml(&cwd.join("src/conf"), "host: 10.0.0.5\n");
        let t = resolve(&base(&cwd), &never).expect("resolve");
        assert_eq!(t.conf_dir, Some(cwd.join("src/conf")));
        assert_eq!(t.host.value, "10.0.0.5");
    }

    /// `--config` may name the YAML file itself; the conf dir is then its grandparent.
    #[test]
    fn config_flag_accepts_yaml_file() {
        let dir = TempDir::new().expect("tempdir");
        let conf = dir.path().join("elsewhere/conf");
        let yaml = write_redis_yaml(&conf, "host: 10.0.0.7\nport: 7000\n");
        let inputs = ConfigInputs {
            config: Some(yaml.clone()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.conf_dir, Some(conf));
        assert_eq!(t.port.value, 7000);
        assert_eq!(t.port.source, Source::ConfFile(yaml));
    }

    /// `--config` may name a conf dir, relative to the cwd, and it beats TATBOT_CONF_DIR and ./src/conf.
    #[test]
    fn config_flag_accepts_conf_dir_and_wins() {
        let dir = TempDir::new().expect("tempdir");
        write_redis_yaml(&dir.path().join("flag"), "host: 10.0.0.1\n");
        write_redis_yaml(&dir.path().join("envdir"), "host: 10.0.0.2\n");
        write_redis_yaml(&dir.path().join("src/conf"), "host: 10.0.0.3\n");
        let inputs = ConfigInputs {
            config: Some(PathBuf::from("flag")),
            env: env(&[(CONF_DIR_VAR, "envdir")]),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.1");
        assert_eq!(t.conf_dir, Some(dir.path().join("flag")));
    }

    /// TATBOT_CONF_DIR is used when there is no `--config`, ahead of ./src/conf.
    #[test]
    fn tatbot_conf_dir_env_is_used() {
        let dir = TempDir::new().expect("tempdir");
        let envdir = dir.path().join("envdir");
        write_redis_yaml(&envdir, "host: 10.0.0.2\n");
        write_redis_yaml(&dir.path().join("src/conf"), "host: 10.0.0.3\n");
        let inputs = ConfigInputs {
            env: env(&[(CONF_DIR_VAR, envdir.to_str().expect("utf-8 path"))]),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.2");
        assert_eq!(t.conf_dir, Some(envdir));
    }

    /// `~/tatbot/src/conf` is used when nothing earlier matches, and ./src/conf beats it.
    #[test]
    fn home_conf_dir_is_last_resort() {
        let dir = TempDir::new().expect("tempdir");
        let home = dir.path().join("home");
        let cwd = dir.path().join("cwd");
        fs::create_dir_all(&cwd).expect("mkdir");
        write_redis_yaml(&home.join("tatbot/src/conf"), "host: 10.0.0.9\n");
        let inputs = ConfigInputs {
            home: Some(home.clone()),
            ..base(&cwd)
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.9");
        assert_eq!(t.conf_dir, Some(home.join("tatbot/src/conf")));

        write_redis_yaml(&cwd.join("src/conf"), "host: 10.0.0.8\n");
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.8");
    }

    /// An explicit `--config` or TATBOT_CONF_DIR that does not exist, or a dir without the YAML, is an error naming it.
    #[test]
    fn missing_explicit_conf_is_error() {
        let dir = TempDir::new().expect("tempdir");
        let missing = dir.path().join("nope");
        let msg = err(&ConfigInputs {
            config: Some(missing.clone()),
            ..base(dir.path())
        });
        assert!(msg.starts_with("--config: "), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");

        let msg = err(&ConfigInputs {
            env: env(&[(CONF_DIR_VAR, missing.to_str().expect("utf-8"))]),
            ..base(dir.path())
        });
        assert!(msg.contains("environment variable TATBOT_CONF_DIR"), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");

        let msg = err(&ConfigInputs {
            config: Some(dir.path().to_path_buf()),
            ..base(dir.path())
        });
        assert!(msg.contains("has no redis/default.yaml"), "{msg}");
    }

    /// The env file beats the YAML, with `export` lines, quotes, comments and unrelated keys handled.
    #[test]
    fn env_file_beats_yaml() {
        let dir = TempDir::new().expect("tempdir");
        write_redis_yaml(
            &dir.path().join("src/conf"),
            "host: 10.0.0.1\nport: 6380\npassword: yamlpass\n",
        );
        let env_path = dir.path().join("tatbot.env");
        write(
            &env_path,
            "# tatbot env\n\nexport REDIS_HOST=\"10.0.0.2\"\nREDIS_PORT='7001' # trailing comment\n  export OTHER=ignored\nNOT_REDIS=\"x y\"\nREDIS_USERNAME=bot\n",
        );
        let inputs = ConfigInputs {
            env_file: Some(env_path.clone()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.2");
        assert_eq!(t.port.value, 7001);
        assert_eq!(t.username.value.as_deref(), Some("bot"));
        assert_eq!(t.password.value.as_deref(), Some("yamlpass"));
        assert_eq!(t.host.source, Source::EnvFile(env_path.clone()));
        assert_eq!(t.host.source.to_string(), format!("env file {}", env_path.display()));
        assert!(matches!(t.password.source, Source::ConfFile(_)));
        assert_eq!(t.env_file, Some(env_path));
    }

    /// TATBOT_ENV_FILE names the env file, and the default env file is read when it exists.
    #[test]
    fn env_file_from_variable_and_default() {
        let dir = TempDir::new().expect("tempdir");
        let named = dir.path().join("named.env");
        write(&named, "REDIS_HOST=10.0.0.4\n");
        let inputs = ConfigInputs {
            env: env(&[(ENV_FILE_VAR, named.to_str().expect("utf-8"))]),
            ..base(dir.path())
        };
        assert_eq!(resolve(&inputs, &never).expect("resolve").host.value, "10.0.0.4");

        let default = dir.path().join("default.env");
        write(&default, "REDIS_HOST=10.0.0.5\n");
        let inputs = ConfigInputs {
            default_env_file: default.clone(),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.5");
        assert_eq!(t.env_file, Some(default));
    }

    /// An explicit env file that does not exist is an error naming it.
    #[test]
    fn missing_explicit_env_file_is_error() {
        let dir = TempDir::new().expect("tempdir");
        let missing = dir.path().join("missing.env");
        let msg = err(&ConfigInputs {
            env_file: Some(missing.clone()),
            ..base(dir.path())
        });
        assert_eq!(msg, format!("--env-file: {} does not exist", missing.display()));
    }

    /// A line that is neither a comment nor `[export] KEY=value` is an error naming file and line, without echoing it.
    #[test]
    fn env_file_syntax_error_names_line() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("bad.env");
        write(&path, "# ok\nREDIS_HOST=10.0.0.1\nsecret-garbage\n");
        let msg = err(&ConfigInputs {
            env_file: Some(path.clone()),
            ..base(dir.path())
        });
        assert_eq!(
            msg,
            format!("{} line 3: expected KEY=value or export KEY=value", path.display())
        );
        assert!(!msg.contains("secret-garbage"));
    }

    /// A bad REDIS_PORT in the env file is an error naming file, line, key and value.
    #[test]
    fn env_file_bad_port_names_file_line_value() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("bad.env");
        write(&path, "\n\nREDIS_PORT=abc\n");
        let msg = err(&ConfigInputs {
            env_file: Some(path.clone()),
            ..base(dir.path())
        });
        assert_eq!(
            msg,
            format!("{} line 3: REDIS_PORT: \"abc\" is not a port (1-65535)", path.display())
        );
    }

    /// The env file parser handles double-quote escapes, `#` inside values and unterminated quotes.
    #[test]
    fn env_line_parser_cases() {
        assert_eq!(parse_env_line("  # c"), Ok(None));
        assert_eq!(parse_env_line("A=pa#ss"), Ok(Some(("A", "pa#ss".to_string()))));
        assert_eq!(parse_env_line("A=pass #c"), Ok(Some(("A", "pass".to_string()))));
        assert_eq!(
            parse_env_line(r#"A="q\"x\\y # z" # c"#),
            Ok(Some(("A", r#"q"x\y # z"#.to_string())))
        );
        assert_eq!(
            parse_env_line("export A='it''"),
            Err("unexpected text after the closing quote")
        );
        assert_eq!(parse_env_line("A='open"), Err("unterminated single quote"));
        assert_eq!(parse_env_line("A=\"open"), Err("unterminated double quote"));
        assert_eq!(parse_env_line("exportA=1"), Ok(Some(("exportA", "1".to_string()))));
        assert!(parse_env_line("1A=1").is_err());
        assert!(parse_env_line("export A").is_err());
        assert_eq!(parse_env_line("A="), Ok(Some(("A", String::new()))));
    }

    /// The process environment beats the env file.
    #[test]
    fn process_env_beats_env_file() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("x.env");
        write(&path, "REDIS_HOST=10.0.0.1\nREDIS_PORT=7000\n");
        let inputs = ConfigInputs {
            env_file: Some(path.clone()),
            env: env(&[(REDIS_HOST, "10.0.0.2")]),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.2");
        assert_eq!(t.host.source, Source::Env("REDIS_HOST".to_string()));
        assert_eq!(t.host.source.to_string(), "environment variable REDIS_HOST");
        assert_eq!(t.port.value, 7000);
        assert_eq!(t.port.source, Source::EnvFile(path));
    }

    /// REDIS_URL sets every part, then REDIS_HOST and friends override its parts.
    #[test]
    fn redis_url_then_parts_override() {
        let dir = TempDir::new().expect("tempdir");
        let inputs = ConfigInputs {
            env: env(&[
                (REDIS_URL, "redis://alice:s%40cret@10.0.0.1:7002/0"),
                (REDIS_HOST, "10.0.0.2"),
            ]),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.2");
        assert_eq!(t.host.source, Source::Env("REDIS_HOST".to_string()));
        assert_eq!(t.port.value, 7002);
        assert_eq!(t.port.source, Source::Env("REDIS_URL".to_string()));
        assert_eq!(t.username.value.as_deref(), Some("alice"));
        assert_eq!(t.password.value.as_deref(), Some("s@cret"));
        assert_eq!(t.redis_url(), "redis://alice:s%40cret@10.0.0.2:7002/");
    }

    /// The percent-encoding crate keeps the hand-written encoder's exact output (issue #12):
    /// only RFC 3986 unreserved characters stay, hex is upper case, UTF-8 is encoded by bytes;
    /// decoding still refuses a stray `%` and non-UTF-8 instead of guessing.
    #[test]
    fn percent_encoding_outputs() {
        assert_eq!(percent_encode("abc-._~XYZ09"), "abc-._~XYZ09");
        assert_eq!(
            percent_encode("p@ss:w/rd% ?#[]!"),
            "p%40ss%3Aw%2Frd%25%20%3F%23%5B%5D%21"
        );
        assert_eq!(percent_encode("é\u{1F512}"), "%C3%A9%F0%9F%94%92");
        for text in ["abc-._~XYZ09", "p@ss:w/rd% ?#[]!", "é\u{1F512}", ""] {
            assert_eq!(percent_decode(&percent_encode(text)).as_deref(), Ok(text));
        }
        assert_eq!(percent_decode("s%40cret%2f"), Ok("s@cret/".to_owned()));
        assert_eq!(percent_decode("100%"), Err("bad percent-encoding"));
        assert_eq!(percent_decode("%4g"), Err("bad percent-encoding"));
        assert_eq!(percent_decode("%FF"), Err("percent-encoding that is not UTF-8"));
    }

    /// A URL names a whole target: its missing port is 6379 and lower-layer passwords do not leak through.
    #[test]
    fn redis_url_is_a_whole_target() {
        let dir = TempDir::new().expect("tempdir");
        write_redis_yaml(&dir.path().join("src/conf"), "port: 7000\npassword: yamlpass\n");
        let inputs = ConfigInputs {
            env: env(&[(REDIS_URL, "redis://10.0.0.1")]),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.port.value, DEFAULT_PORT);
        assert_eq!(t.password.value, None);
        assert_eq!(t.password.source, Source::Env("REDIS_URL".to_string()));
    }

    /// Within the env file REDIS_URL applies first and REDIS_PORT overrides it; the process REDIS_URL beats both.
    #[test]
    fn env_file_url_then_parts_and_level_order() {
        let dir = TempDir::new().expect("tempdir");
        let path = dir.path().join("x.env");
        write(&path, "REDIS_PORT=7005\nREDIS_URL=redis://10.0.0.1:7004\n");
        let mut inputs = ConfigInputs {
            env_file: Some(path.clone()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!((t.host.value.as_str(), t.port.value), ("10.0.0.1", 7005));

        inputs.env = env(&[(REDIS_URL, "redis://10.0.0.9")]);
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!((t.host.value.as_str(), t.port.value), ("10.0.0.9", 6379));
        assert_eq!(t.port.source, Source::Env("REDIS_URL".to_string()));
    }

    /// An empty REDIS_PASSWORD explicitly means "no password", overriding the YAML's.
    #[test]
    fn empty_password_means_none() {
        let dir = TempDir::new().expect("tempdir");
        write_redis_yaml(&dir.path().join("src/conf"), "password: yamlpass\n");
        let inputs = ConfigInputs {
            env: env(&[(REDIS_PASSWORD, "")]),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.password.value, None);
        assert_eq!(t.password.source, Source::Env("REDIS_PASSWORD".to_string()));
    }

    /// Flags beat every other source, and each field reports the source that won.
    #[test]
    fn flags_beat_everything_and_sources_are_right() {
        let dir = TempDir::new().expect("tempdir");
        let yaml = write_redis_yaml(
            &dir.path().join("src/conf"),
            "host: 10.0.0.1\nport: 7001\npassword: a\nusername: y\n",
        );
        let path = dir.path().join("x.env");
        write(&path, "REDIS_PASSWORD=b\n");
        let inputs = ConfigInputs {
            env_file: Some(path.clone()),
            env: env(&[(REDIS_URL, "redis://u:c@10.0.0.3:7003"), (REDIS_PORT, "7004")]),
            host: Some("10.0.0.5".to_string()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.source, Source::Flag("--host"));
        assert_eq!(t.host.source.to_string(), "flag --host");
        assert_eq!(t.port.source, Source::Env("REDIS_PORT".to_string()));
        assert_eq!(t.password.source, Source::Env("REDIS_URL".to_string()));
        assert_eq!(t.username.value.as_deref(), Some("u"));

        let inputs = ConfigInputs {
            host: Some("10.0.0.5".to_string()),
            port: Some(7009),
            password: Some("flagpass".to_string()),
            username: Some(String::new()),
            ..inputs
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.host.value, "10.0.0.5");
        assert_eq!(
            t.port,
            Sourced {
                value: 7009,
                source: Source::Flag("--port")
            }
        );
        assert_eq!(t.password.value.as_deref(), Some("flagpass"));
        assert_eq!(t.password.source, Source::Flag("--password"));
        assert_eq!(
            t.username,
            Sourced {
                value: None,
                source: Source::Flag("--user")
            }
        );
        assert_eq!(t.conf_dir, yaml.parent().and_then(Path::parent).map(Path::to_path_buf));
    }

    /// The password never appears in `display_redacted`, `describe`, `Display` or `Debug`.
    #[test]
    fn password_is_redacted() {
        let dir = TempDir::new().expect("tempdir");
        let inputs = ConfigInputs {
            password: Some("hunter2".to_string()),
            username: Some("bot".to_string()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.display_redacted(), "bot@127.0.0.1:6379 (password set)");
        assert_eq!(t.to_string(), t.display_redacted());
        let rows = t.describe();
        assert!(rows.contains(&("password", "(set)".to_string(), "flag --password".to_string())));
        assert!(rows.contains(&("username", "bot".to_string(), "flag --user".to_string())));
        assert!(rows.contains(&("host", "127.0.0.1".to_string(), "default".to_string())));
        assert!(rows.contains(&("connect", "127.0.0.1".to_string(), "ip literal".to_string())));
        let everything = format!("{} {rows:?} {t:?} {inputs:?}", t.display_redacted());
        assert!(!everything.contains("hunter2"), "{everything}");
        assert!(t.redis_url().contains("hunter2"));

        let t = resolve(&base(dir.path()), &never).expect("resolve");
        assert_eq!(t.display_redacted(), "127.0.0.1:6379 (no password)");
    }

    /// Bad YAML values are errors naming the file, the field and the value.
    #[test]
    fn bad_yaml_values_name_file_field_value() {
        let cases = [
            ("port: \"abc\"\n", "field \"port\": \"abc\" is not a port (1-65535)"),
            ("port: 70000\n", "field \"port\": 70000 is not a port (1-65535)"),
            ("port: 0\n", "field \"port\": 0 is not a port (1-65535)"),
            ("port: [1]\n", "field \"port\": a list is not a port (1-65535)"),
            ("host: \"\"\n", "field \"host\": \"\" is not a host name (empty)"),
            (
                "host: \"eek:6379\"\n",
                "field \"host\": \"eek:6379\" is not a host name (give the port separately)",
            ),
            (
                "password: 12345\n",
                "field \"password\": a number is not a string (quote it)",
            ),
        ];
        for (yaml, expected) in cases {
            let dir = TempDir::new().expect("tempdir");
            let path = write_redis_yaml(&dir.path().join("src/conf"), yaml);
            let msg = err(&base(dir.path()));
            assert_eq!(msg, format!("{}: {expected}", path.display()), "yaml {yaml:?}");
        }
    }

    /// YAML that does not parse is an error naming the file and the parser's line and column.
    #[test]
    fn unparsable_yaml_names_file_and_location() {
        let dir = TempDir::new().expect("tempdir");
        let path = write_redis_yaml(&dir.path().join("src/conf"), "host: 10.0.0.1\nport: [6379\n");
        let error = resolve(&base(dir.path()), &never).expect_err("bad yaml");
        let msg = error.to_string();
        assert!(msg.starts_with(&format!("{}: invalid yaml: ", path.display())), "{msg}");
        assert!(msg.contains("line 3 column 1"), "{msg}");
        assert!(matches!(
            error,
            ConfigError::Yaml {
                line: Some(3),
                column: Some(1),
                ..
            }
        ));

        write_redis_yaml(&dir.path().join("src/conf"), "host: a\nhost: b\n");
        let msg = err(&base(dir.path()));
        assert!(
            msg.contains("duplicate entry") && msg.contains("at line 1 column 1"),
            "{msg}"
        );
    }

    /// Bad values in the process environment name the variable and value.
    #[test]
    fn bad_env_values_name_variable_and_value() {
        let dir = TempDir::new().expect("tempdir");
        let cases = [
            (
                REDIS_PORT,
                "abc",
                "environment variable REDIS_PORT: \"abc\" is not a port (1-65535)",
            ),
            (
                REDIS_PORT,
                "",
                "environment variable REDIS_PORT: \"\" is not a port (1-65535)",
            ),
            (
                REDIS_HOST,
                "",
                "environment variable REDIS_HOST: \"\" is not a host name (empty)",
            ),
            (
                REDIS_URL,
                "rediss://u:topsecret@h:6380",
                "environment variable REDIS_URL: \"rediss://u:***@h:6380\" is not a redis URL: TLS not supported (rediss://); use a redis:// URL",
            ),
            (
                REDIS_URL,
                "http://h",
                "environment variable REDIS_URL: \"http://h\" is not a redis URL: scheme \"http\" not supported; expected redis://[user[:pass]@]host[:port][/db]",
            ),
            (
                REDIS_URL,
                "redis://h:99999",
                "environment variable REDIS_URL: \"redis://h:99999\" is not a redis URL: port \"99999\" is not a port (1-65535)",
            ),
            (
                REDIS_URL,
                "redis://h/2",
                "environment variable REDIS_URL: \"redis://h/2\" is not a redis URL: database 2 not supported (tatbot uses database 0)",
            ),
            (
                REDIS_URL,
                "redis://:pw%zz@h",
                "environment variable REDIS_URL: \"redis://:***@h\" is not a redis URL: bad percent-encoding in the password",
            ),
            (
                REDIS_URL,
                "10.0.0.1:6379",
                "environment variable REDIS_URL: \"10.0.0.1:6379\" is not a redis URL: expected redis://[user[:pass]@]host[:port][/db]",
            ),
        ];
        for (var, value, expected) in cases {
            let inputs = ConfigInputs {
                env: env(&[(var, value)]),
                ..base(dir.path())
            };
            assert_eq!(err(&inputs), expected);
        }
        let inputs = ConfigInputs {
            port: Some(0),
            ..base(dir.path())
        };
        assert_eq!(err(&inputs), "flag --port: 0 is not a port (1-65535)");
    }

    /// URL parsing handles users without passwords, bracketed IPv6, empty ports and percent-decoding.
    #[test]
    fn redis_url_parser_cases() {
        let parsed = parse_redis_url("REDIS://bob@[::1]:/").expect("parse");
        assert_eq!(
            parsed,
            ParsedUrl {
                host: "::1".to_string(),
                port: None,
                username: Some("bob".to_string()),
                password: None
            }
        );
        let parsed = parse_redis_url("redis://:p%3Aw%2F@eek.local:6390").expect("parse");
        assert_eq!(parsed.password.as_deref(), Some("p:w/"));
        assert_eq!(parsed.username, None);
        assert_eq!(parsed.port, Some(6390));
        assert!(parse_redis_url("redis://").is_err());
        assert!(parse_redis_url("redis://h?db=1").is_err());
    }

    /// A host that does not resolve falls back to its IP in the node inventory, and that is reported.
    #[test]
    fn inventory_fallback_applies_and_is_reported() {
        let dir = TempDir::new().expect("tempdir");
        let conf = dir.path().join("src/conf");
        write_redis_yaml(&conf, "host: eek.invalid\nport: 6379\npassword: null\n");
        let inventory = conf.join("nodes.yaml");
        write(
            &inventory,
            "nodes:\n- name: ook\n  emoji: 🦧\n  ip: 192.168.1.90\n  user: ook\n  mac: 70:08:94:EF:7A:F9\n- name: eek.invalid\n  ip: 192.168.1.97\n  user: eek\n",
        );
        let t = resolve(&base(dir.path()), &resolve_host_system).expect("resolve");
        assert_eq!(t.host.value, "eek.invalid");
        assert_eq!(t.connect_host, "192.168.1.97");
        assert_eq!(
            t.inventory_fallback,
            Some(InventoryFallback {
                name: "eek.invalid".to_string(),
                ip: "192.168.1.97".parse().expect("ip"),
                inventory: inventory.clone(),
            })
        );
        assert_eq!(t.redis_url(), "redis://192.168.1.97:6379/");
        assert_eq!(
            t.display_redacted(),
            "192.168.1.97:6379 (host eek.invalid via node inventory, no password)"
        );
        let connect = (
            "connect",
            "192.168.1.97".to_string(),
            format!("node inventory {}", inventory.display()),
        );
        assert!(t.describe().contains(&connect));
    }

    /// `src/conf/nodes.yaml` serves as the inventory even without `redis/default.yaml` beside
    /// it, found implicitly and through `--config DIR` alike (issue #13 point 6).
    #[test]
    fn inventory_serves_without_redis_yaml() {
        let dir = TempDir::new().expect("tempdir");
        let conf = dir.path().join("src/conf");
        write(
            &conf.join("nodes.yaml"),
            "nodes:\n- name: eek.invalid\n  ip: 192.168.1.97\n",
        );
        for config in [None, Some(conf.clone())] {
            let inputs = ConfigInputs {
                config,
                env: env(&[(REDIS_HOST, "eek.invalid")]),
                ..base(dir.path())
            };
            let t = resolve(&inputs, &resolve_host_system).expect("resolve");
            assert_eq!(t.connect_host, "192.168.1.97");
            assert_eq!(t.conf_dir.as_deref(), Some(conf.as_path()));
            assert_eq!(t.port.source, Source::Default);
        }
        // A dir with neither file is still not a conf dir.
        let empty = dir.path().join("empty");
        fs::create_dir_all(&empty).expect("create dir");
        let inputs = ConfigInputs {
            config: Some(empty),
            ..base(dir.path())
        };
        assert!(err(&inputs).contains("has no redis/default.yaml"));
    }

    /// Unknown keys of the Redis YAML are named, with the likely key when one is close;
    /// the keys it reads and Hydra's own are not.
    #[test]
    fn unknown_yaml_keys_are_named_with_a_suggestion() {
        let message = |key: &str| unknown_key_message(&Value::String(key.to_owned()));
        for key in [
            "host",
            "port",
            "password",
            "username",
            "sentinels",
            "master_name",
            "sentinel_password",
            "defaults",
            "_target_",
            "hydra",
        ] {
            assert_eq!(message(key), None, "{key}");
        }
        assert_eq!(
            message("prot").as_deref(),
            Some("ignoring the unknown key \"prot\"; did you mean \"port\"?")
        );
        assert_eq!(
            message("Hostname").as_deref(),
            Some(
                "ignoring the unknown key \"Hostname\" (this file sets host, port, password, username, sentinels, master_name, sentinel_password)"
            )
        );
        assert_eq!(
            message("master-name").as_deref(),
            Some("ignoring the unknown key \"master-name\"; did you mean \"master_name\"?")
        );
        assert_eq!(
            message("passwrd").as_deref(),
            Some("ignoring the unknown key \"passwrd\"; did you mean \"password\"?")
        );
    }

    /// `resolve_unchecked` gives the layered fields of a host that does not resolve, which
    /// `resolve` refuses.
    #[test]
    fn unchecked_resolution_keeps_an_unresolvable_host() {
        let dir = TempDir::new().expect("tempdir");
        let inputs = ConfigInputs {
            env: env(&[(REDIS_HOST, "eek.invalid")]),
            ..base(dir.path())
        };
        assert!(matches!(
            resolve(&inputs, &|_| false),
            Err(ConfigError::Unresolvable { .. })
        ));
        let t = resolve_unchecked(&inputs).expect("resolve");
        assert_eq!(
            (t.host.value.as_str(), t.connect_host.as_str()),
            ("eek.invalid", "eek.invalid")
        );
    }

    /// A host that does not resolve and is not in the inventory gives an error that says why
    /// the inventory could not stand in and where the host came from (the binary's hint
    /// depends on it); the message itself gives no site-specific advice (issue #12).
    #[test]
    fn unknown_host_without_inventory_entry_is_error_naming_the_inventory() {
        let dir = TempDir::new().expect("tempdir");
        let conf = dir.path().join("src/conf");
        write_redis_yaml(&conf, "host: eek.invalid\n");
        let msg = resolve(&base(dir.path()), &resolve_host_system)
            .expect_err("unresolvable")
            .to_string();
        assert_eq!(
            msg,
            format!(
                "host \"eek.invalid\" does not resolve and no node inventory was found at {}",
                conf.join("nodes.yaml").display()
            )
        );

        write(&conf.join("nodes.yaml"), "nodes: [{name: ook, ip: 192.168.1.90}]\n");
        let msg = resolve(&base(dir.path()), &resolve_host_system)
            .expect_err("unresolvable")
            .to_string();
        assert_eq!(
            msg,
            format!(
                "host \"eek.invalid\" does not resolve and {} has no entry for it",
                conf.join("nodes.yaml").display()
            )
        );

        let inputs = ConfigInputs {
            host: Some("eek.invalid".to_string()),
            cwd: dir.path().join("empty"),
            ..base(dir.path())
        };
        let err = resolve(&inputs, &resolve_host_system).expect_err("unresolvable");
        assert_eq!(
            err.to_string(),
            "host \"eek.invalid\" does not resolve and no node inventory was found (no conf dir)"
        );
        assert!(
            matches!(
                &err,
                ConfigError::Unresolvable {
                    host_source: Source::Flag("--host"),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// A malformed inventory is an error naming file, entry and value, but only when the fallback needs it.
    #[test]
    fn malformed_inventory_only_matters_when_needed() {
        let dir = TempDir::new().expect("tempdir");
        let conf = dir.path().join("src/conf");
        write_redis_yaml(&conf, "host: eek.invalid\n");
        let inventory = conf.join("nodes.yaml");
        write(
            &inventory,
            "nodes:\n- name: ook\n  ip: 192.168.1.300\n- name: eek.invalid\n  ip: 192.168.1.97\n",
        );
        let msg = resolve(&base(dir.path()), &resolve_host_system)
            .expect_err("bad ip")
            .to_string();
        assert_eq!(
            msg,
            format!(
                "{}: nodes[0] \"ook\": field \"ip\": \"192.168.1.300\" is not an IP address",
                inventory.display()
            )
        );

        write(&inventory, "nodes: [unclosed\n");
        let msg = resolve(&base(dir.path()), &resolve_host_system)
            .expect_err("bad yaml")
            .to_string();
        assert!(
            msg.starts_with(&format!("{}: invalid yaml: ", inventory.display())),
            "{msg}"
        );

        // The same broken inventory is never read when the host resolves or is an IP.
        let t = resolve(&base(dir.path()), &|_| true).expect("resolves");
        assert_eq!(t.connect_host, "eek.invalid");
        assert_eq!(t.inventory_fallback, None);
        let inputs = ConfigInputs {
            host: Some("10.0.0.1".to_string()),
            ..base(dir.path())
        };
        assert_eq!(resolve(&inputs, &never).expect("ip").connect_host, "10.0.0.1");
    }

    /// A host that resolves is dialled by name without consulting the inventory.
    #[test]
    fn resolvable_host_is_used_by_name() {
        let dir = TempDir::new().expect("tempdir");
        let inputs = ConfigInputs {
            host: Some("localhost".to_string()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &resolve_host_system).expect("resolve");
        assert_eq!(t.connect_host, "localhost");
        assert!(
            t.describe()
                .contains(&("connect", "localhost".to_string(), "dns".to_string()))
        );
    }

    /// IP literal hosts, v4 or v6 and bracketed or not, are never looked up.
    #[test]
    fn ip_host_is_never_looked_up() {
        let dir = TempDir::new().expect("tempdir");
        for host in ["192.168.1.97", "::1", "[fe80::1]"] {
            let inputs = ConfigInputs {
                env: env(&[(REDIS_HOST, host)]),
                ..base(dir.path())
            };
            let t = resolve(&inputs, &never).expect("resolve");
            assert_eq!(t.connect_host, host.trim_matches(['[', ']']));
        }
    }

    /// IPv6 hosts are bracketed in the URL and the display, and userinfo is percent-encoded.
    #[test]
    fn ipv6_url_formatting_and_encoding() {
        let dir = TempDir::new().expect("tempdir");
        let inputs = ConfigInputs {
            host: Some("fe80::1".to_string()),
            port: Some(6390),
            password: Some("p@ss:w/rd é".to_string()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.redis_url(), "redis://:p%40ss%3Aw%2Frd%20%C3%A9@[fe80::1]:6390/");
        assert_eq!(t.display_redacted(), "[fe80::1]:6390 (password set)");
        let round_trip = parse_redis_url(&t.redis_url()).expect("parse");
        assert_eq!(round_trip.password.as_deref(), Some("p@ss:w/rd é"));
        assert_eq!(round_trip.host, "fe80::1");
    }

    /// An empty TATBOT_CONF_DIR counts as unset, and a ./src/conf without the Redis YAML is passed over.
    #[test]
    fn empty_conf_var_and_foreign_src_conf_are_skipped() {
        let dir = TempDir::new().expect("tempdir");
        let home = dir.path().join("home");
        write_redis_yaml(&home.join("tatbot/src/conf"), "host: 10.0.0.9\n");
        write(&dir.path().join("src/conf/other.yaml"), "x: 1\n");
        let inputs = ConfigInputs {
            env: env(&[(CONF_DIR_VAR, ""), (ENV_FILE_VAR, "")]),
            home: Some(home.clone()),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &never).expect("resolve");
        assert_eq!(t.conf_dir, Some(home.join("tatbot/src/conf")));
        assert_eq!(t.env_file, None);
    }

    /// A `--config` file outside a `redis` dir takes its own dir as the conf dir, so a `nodes.yaml` beside it is used.
    #[test]
    fn config_file_outside_redis_dir_uses_its_dir() {
        let dir = TempDir::new().expect("tempdir");
        let yaml = dir.path().join("site/redis.yaml");
        write(&yaml, "host: eek.invalid\n");
        write(
            &dir.path().join("site/nodes.yaml"),
            "nodes:\n- {name: eek.invalid, ip: 10.9.8.7}\n",
        );
        let inputs = ConfigInputs {
            config: Some(yaml),
            ..base(dir.path())
        };
        let t = resolve(&inputs, &resolve_host_system).expect("resolve");
        assert_eq!(t.conf_dir, Some(dir.path().join("site")));
        assert_eq!(t.connect_host, "10.9.8.7");
    }

    /// Inventory entries without a name or ip are errors naming the entry.
    #[test]
    fn inventory_entry_missing_fields_is_error() {
        let dir = TempDir::new().expect("tempdir");
        let conf = dir.path().join("src/conf");
        write_redis_yaml(&conf, "host: eek.invalid\n");
        let inventory = conf.join("nodes.yaml");
        write(&inventory, "nodes:\n- name: eek.invalid\n  user: eek\n");
        let msg = resolve(&base(dir.path()), &resolve_host_system)
            .expect_err("no ip")
            .to_string();
        assert_eq!(
            msg,
            format!(
                "{}: nodes[0] \"eek.invalid\": field \"ip\": (missing) is not an IP address",
                inventory.display()
            )
        );
        write(&inventory, "nodes: 3\n");
        let msg = resolve(&base(dir.path()), &resolve_host_system)
            .expect_err("not a list")
            .to_string();
        assert_eq!(
            msg,
            format!("{}: field \"nodes\": 3 is not a list", inventory.display())
        );
    }

    /// The builder sets exactly the flag fields, and `from_url` reads nothing but the URL.
    #[test]
    fn builder_and_url() {
        let inputs = ConfigInputs::default()
            .host("h")
            .port(7001)
            .password("")
            .username("robot");
        assert_eq!(
            (
                inputs.host.as_deref(),
                inputs.port,
                inputs.password.as_deref(),
                inputs.username.as_deref()
            ),
            (Some("h"), Some(7001), Some(""), Some("robot"))
        );
        let target = inputs.resolve_with(&|_| true).unwrap();
        assert_eq!((target.host.value.as_str(), target.port.value), ("h", 7001));
        assert_eq!(target.port.source, Source::Flag("--port"));
        let target = RedisTarget::from_url("redis://alice:s%40cret@10.0.0.1:7002/0").unwrap();
        assert_eq!(
            (
                target.host.value.as_str(),
                target.port.value,
                target.password.value.as_deref()
            ),
            ("10.0.0.1", 7002, Some("s@cret"))
        );
        assert!(target.env_file.is_none() && target.conf_dir.is_none());
        assert!(RedisTarget::from_url("http://x").is_err());
    }

    /// `from_process` takes the real working directory and the real default env file.
    #[test]
    fn from_process_fills_process_state() {
        let inputs = ConfigInputs::from_process(None, None, Some("h".to_string()), Some(1), None, None);
        assert_eq!(inputs.cwd, std::env::current_dir().expect("cwd"));
        assert_eq!(inputs.default_env_file, PathBuf::from(DEFAULT_ENV_FILE));
        assert_eq!(inputs.host.as_deref(), Some("h"));
    }
}

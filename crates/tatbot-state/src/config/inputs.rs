//! [`ConfigInputs`]: everything resolution looks at, and the builder that sets its flags.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::config::{ConfigError, DEFAULT_ENV_FILE, RedisTarget, resolve, resolve_host_system};
use crate::redacted::Redacted;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::*;

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

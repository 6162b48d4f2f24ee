//! [`resolve`]: the layers applied in order, and the [`RedisTarget`] it answers with.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

use crate::config::conf_file::{find_conf, read_conf_yaml};
use crate::config::env_file::{EnvVars, find_env_file, read_env_file};
use crate::config::inventory::connect_target;
use crate::config::layers::{Fields, flag_layer};
use crate::config::url::{bracket_host, percent_encode};
use crate::config::{ConfigError, ConfigInputs, InventoryFallback, REDIS_KEYS, REDIS_URL, Sourced};
use crate::redacted::Redacted;

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

#[cfg(test)]
mod tests {
    #[cfg(not(feature = "yaml"))]
    use std::fs;

    use tempfile::TempDir;

    use super::*;
    use crate::config::testutil::*;
    use crate::config::*;

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

    #[cfg(feature = "yaml")]
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

    /// Issue #12: built without the `yaml` feature, a Redis YAML or a node inventory that
    /// resolution would read is refused with one line naming the file and the feature, never
    /// passed over (which would connect with defaults the file meant to change).
    #[cfg(not(feature = "yaml"))]
    #[test]
    fn without_yaml_a_conf_file_or_inventory_is_refused() {
        let dir = TempDir::new().expect("tempdir");
        let conf = dir.path().join("src/conf");
        let yaml = conf.join("redis/default.yaml");
        write(&yaml, "port: 6380\n");
        let message = |inputs: &ConfigInputs| match resolve(inputs, &|_| false) {
            Err(ConfigError::YamlDisabled { path }) => path,
            other => panic!("expected YamlDisabled, got {other:?}"),
        };
        assert_eq!(message(&base(dir.path())), yaml);
        let sentinel = resolve_sentinel(&base(dir.path()), &SentinelInputs::default());
        assert!(
            matches!(sentinel, Err(ConfigError::YamlDisabled { .. })),
            "{sentinel:?}"
        );
        assert_eq!(
            err(&base(dir.path())),
            format!(
                "{}: reading YAML is not built in (enable the tatbot-state feature \"yaml\" to read it)",
                yaml.display()
            )
        );
        // An inventory is read only for a host that does not resolve.
        fs::remove_file(&yaml).expect("remove yaml");
        let inventory = conf.join(INVENTORY_FILE);
        write(&inventory, "nodes:\n- {name: eek, ip: 10.0.0.1}\n");
        let inputs = ConfigInputs {
            host: Some("eek".to_owned()),
            ..base(dir.path())
        };
        assert_eq!(message(&inputs), inventory);
        assert!(
            resolve(&inputs, &|_| true).is_ok(),
            "a resolving host needs no inventory"
        );
    }
}

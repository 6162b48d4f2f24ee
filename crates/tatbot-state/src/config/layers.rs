//! The layering itself: [`Source`] and [`Sourced`], the four fields as layered so far, one
//! source's [`Layer`], the flag layer and the checks of a host and a port every layer shares.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, ConfigInputs, DEFAULT_HOST, DEFAULT_PORT, PORT_PROBLEM};

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

/// The four fields as layered so far.
pub(super) struct Fields {
    pub(super) host: Sourced<String>,
    pub(super) port: Sourced<u16>,
    pub(super) password: Sourced<Option<String>>,
    pub(super) username: Sourced<Option<String>>,
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
    pub(super) fn overlay(&mut self, layer: Layer) {
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
pub(super) struct Layer {
    pub(super) host: Option<Sourced<String>>,
    pub(super) port: Option<Sourced<u16>>,
    pub(super) password: Option<Sourced<Option<String>>>,
    pub(super) username: Option<Sourced<Option<String>>>,
}

/// An environment variable from the snapshot, treating an empty value as unset
/// so that `TATBOT_CONF_DIR=` can switch a setting off.
pub(super) fn non_empty_var<'a>(inputs: &'a ConfigInputs, var: &str) -> Option<&'a str> {
    inputs.env.get(var).map(String::as_str).filter(|v| !v.is_empty())
}

pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })
}

/// Checks a host name or IP literal; `[v6]` brackets are removed.
pub(super) fn validate_host(host: &str) -> Result<String, &'static str> {
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

pub(super) fn parse_port(text: &str) -> Result<u16, &'static str> {
    text.parse::<u16>().ok().filter(|&p| p != 0).ok_or(PORT_PROBLEM)
}

pub(super) fn flag_layer(inputs: &ConfigInputs) -> Result<Layer, ConfigError> {
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

#[cfg(all(test, feature = "yaml"))]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::config::testutil::*;
    use crate::config::*;

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
}

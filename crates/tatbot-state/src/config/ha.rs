//! The Sentinel target beside the plain one: `sentinels`, `master_name` and
//! `sentinel_password`, layered like the host and port (default, Hydra YAML, env file,
//! environment, flags) and each remembering its source.
//!
//! | YAML (`redis/default.yaml`) | environment / env file    | flag                        |
//! |-----------------------------|---------------------------|-----------------------------|
//! | `sentinels: [eek:26379]`    | `REDIS_SENTINELS=a:26379,b` | `--sentinel HOST:PORT` (repeat) |
//! | `master_name: tatbot`       | `REDIS_MASTER_NAME`       | `--master-name`             |
//! | `sentinel_password: ...`    | `REDIS_SENTINEL_PASSWORD` | `--sentinel-password`       |
//!
//! Sentinel mode is on when the layering ends with at least one Sentinel; an empty
//! `REDIS_SENTINELS=` (or `sentinels: []`) turns off what a lower layer set. The password of
//! Redis itself stays `REDIS_PASSWORD`: Sentinels usually have their own (`requirepass` in
//! `sentinel.conf`). It lives in its own module so that the plain resolver stays as it was.

use std::collections::BTreeMap;
use std::path::Path;

#[cfg(feature = "yaml")]
use serde_yaml_ng::Value;

use crate::config::{
    ConfigError, ConfigInputs, Source, Sourced, find_conf, find_env_file, parse_env_line, read_file, validate_host,
};
#[cfg(feature = "yaml")]
use crate::config::{parse_yaml, render_yaml};
use crate::connection::Endpoint;
use crate::sentinel::{DEFAULT_MASTER_NAME, DEFAULT_SENTINEL_PORT, SentinelTarget};

const REDIS_SENTINELS: &str = "REDIS_SENTINELS";
const REDIS_MASTER_NAME: &str = "REDIS_MASTER_NAME";
const REDIS_SENTINEL_PASSWORD: &str = "REDIS_SENTINEL_PASSWORD";
const SENTINEL_KEYS: [&str; 3] = [REDIS_SENTINELS, REDIS_MASTER_NAME, REDIS_SENTINEL_PASSWORD];
const SENTINEL_PROBLEM: &str = "is not a sentinel address (host or host:port, comma-separated; e.g. eek:26379)";
const NAME_PROBLEM: &str = "is not a master name (one word of letters, digits, '-', '_' or '.')";

/// The Sentinel flags, kept beside [`ConfigInputs`] (whose flags are the plain target's).
#[derive(Clone, Default)]
pub struct SentinelInputs {
    /// `--sentinel HOST[:PORT]`, repeatable; one empty value turns Sentinel off.
    pub sentinels: Vec<String>,
    /// `--master-name`.
    pub master_name: Option<String>,
    /// `--sentinel-password`; an empty string means "no password".
    pub sentinel_password: Option<String>,
}

/// Redacts the password.
impl std::fmt::Debug for SentinelInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelInputs")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The resolved Sentinel settings, each with its source.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// The Sentinels as (host, port).
    pub sentinels: Sourced<Vec<(String, u16)>>,
    /// The monitored master's name.
    pub master_name: Sourced<String>,
    /// The Sentinels' password.
    pub password: Sourced<Option<String>>,
}

/// Redacts the password.
impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("password", &self.password.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl SentinelSettings {
    /// The target a [`crate::ManagerConfig`] takes.
    pub fn target(&self) -> SentinelTarget {
        SentinelTarget {
            sentinels: self
                .sentinels
                .value
                .iter()
                .map(|(host, port)| {
                    let endpoint = Endpoint::new(host.clone(), *port);
                    match &self.password.value {
                        Some(password) => endpoint.with_password(password.clone()),
                        None => endpoint,
                    }
                })
                .collect(),
            master_name: self.master_name.value.clone(),
        }
    }

    /// Rows of `(field, value, source)` for a `config` command, the password redacted.
    pub fn describe(&self) -> Vec<(&'static str, String, String)> {
        let sentinels: Vec<String> = self.target().sentinels.iter().map(ToString::to_string).collect();
        vec![
            ("sentinels", sentinels.join(","), self.sentinels.source.to_string()),
            (
                "master name",
                self.master_name.value.clone(),
                self.master_name.source.to_string(),
            ),
            (
                "sentinel password",
                match self.password.value {
                    Some(_) => "(set)".to_owned(),
                    None => "(none)".to_owned(),
                },
                self.password.source.to_string(),
            ),
        ]
    }
}

/// One layer: what a source sets.
#[derive(Default)]
struct Layer {
    sentinels: Option<Sourced<Vec<(String, u16)>>>,
    master_name: Option<Sourced<String>>,
    password: Option<Sourced<Option<String>>>,
}

impl Layer {
    fn overlay(&mut self, upper: Layer) {
        if upper.sentinels.is_some() {
            self.sentinels = upper.sentinels;
        }
        if upper.master_name.is_some() {
            self.master_name = upper.master_name;
        }
        if upper.password.is_some() {
            self.password = upper.password;
        }
    }
}

/// Resolves the Sentinel settings; `None` when no layer names a Sentinel.
///
/// # Errors
///
/// A [`ConfigError`] naming the bad file, variable or flag.
pub fn resolve_sentinel(
    inputs: &ConfigInputs,
    flags: &SentinelInputs,
) -> Result<Option<SentinelSettings>, ConfigError> {
    let mut layer = Layer::default();
    // A conf dir with only the node inventory has no Redis YAML to read.
    if let Some(yaml) = find_conf(inputs)?.and_then(|conf| conf.yaml) {
        layer.overlay(yaml_layer(&yaml)?);
    }
    if let Some(path) = find_env_file(inputs)? {
        let vars = read_env_vars(&path)?;
        layer.overlay(env_layer(&vars, Some(&path))?);
    }
    let process: BTreeMap<&'static str, (String, usize)> = SENTINEL_KEYS
        .iter()
        .filter_map(|&key| inputs.env.get(key).map(|value| (key, (value.clone(), 0))))
        .collect();
    layer.overlay(env_layer(&process, None)?);
    layer.overlay(flag_layer(flags)?);
    let Some(sentinels) = layer.sentinels.filter(|sentinels| !sentinels.value.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(SentinelSettings {
        sentinels,
        master_name: layer.master_name.unwrap_or(Sourced {
            value: DEFAULT_MASTER_NAME.to_owned(),
            source: Source::Default,
        }),
        password: layer.password.unwrap_or(Sourced {
            value: None,
            source: Source::Default,
        }),
    }))
}

/// Parses `host`, `host:port` or `[v6]:port`; the port defaults to 26379.
fn parse_sentinel(text: &str) -> Result<(String, u16), &'static str> {
    let text = text.trim();
    let (host, port) = match text.rsplit_once(':') {
        // An IPv6 address without brackets has colons but no port.
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => (
            host,
            port.parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or(SENTINEL_PROBLEM)?,
        ),
        _ => (text, DEFAULT_SENTINEL_PORT),
    };
    let host = validate_host(host).map_err(|_| SENTINEL_PROBLEM)?;
    Ok((host, port))
}

/// Parses a comma-separated list; an empty (or all-blank) text is an empty list.
fn parse_list(text: &str) -> Result<Vec<(String, u16)>, &'static str> {
    text.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(parse_sentinel)
        .collect()
}

fn valid_name(name: &str) -> Result<String, &'static str> {
    let ok =
        !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok { Ok(name.to_owned()) } else { Err(NAME_PROBLEM) }
}

#[cfg(not(feature = "yaml"))]
/// Without the `yaml` feature the plain resolver refuses the Redis YAML, and so does this one.
fn yaml_layer(path: &Path) -> Result<Layer, ConfigError> {
    Err(ConfigError::YamlDisabled {
        path: path.to_path_buf(),
    })
}

#[cfg(feature = "yaml")]
fn yaml_layer(path: &Path) -> Result<Layer, ConfigError> {
    let text = read_file(path)?;
    let Value::Mapping(map) = parse_yaml(path, &text)? else {
        // The plain resolver reports a YAML that is not a mapping.
        return Ok(Layer::default());
    };
    let source = Source::ConfFile(path.to_path_buf());
    let field_error = |field: &str, value: String, problem: &str| ConfigError::ConfField {
        path: path.to_path_buf(),
        field: field.to_owned(),
        value,
        problem: problem.to_owned(),
    };
    let mut layer = Layer::default();
    match map.get("sentinels") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => {
            let list = parse_list(text).map_err(|p| field_error("sentinels", format!("{text:?}"), p))?;
            layer.sentinels = Some(Sourced {
                value: list,
                source: source.clone(),
            });
        }
        Some(Value::Sequence(items)) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(text) = item else {
                    return Err(field_error("sentinels", render_yaml(item), SENTINEL_PROBLEM));
                };
                list.push(parse_sentinel(text).map_err(|p| field_error("sentinels", format!("{text:?}"), p))?);
            }
            layer.sentinels = Some(Sourced {
                value: list,
                source: source.clone(),
            });
        }
        Some(other) => return Err(field_error("sentinels", render_yaml(other), SENTINEL_PROBLEM)),
    }
    match map.get("master_name") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => {
            let name = valid_name(name).map_err(|p| field_error("master_name", format!("{name:?}"), p))?;
            layer.master_name = Some(Sourced {
                value: name,
                source: source.clone(),
            });
        }
        Some(other) => return Err(field_error("master_name", render_yaml(other), NAME_PROBLEM)),
    }
    match map.get("sentinel_password") {
        None => {}
        Some(Value::Null) => layer.password = Some(Sourced { value: None, source }),
        Some(Value::String(password)) => {
            layer.password = Some(Sourced {
                value: Some(password.clone()).filter(|p| !p.is_empty()),
                source,
            });
        }
        Some(_) => {
            return Err(field_error(
                "sentinel_password",
                "(redacted)".to_owned(),
                "is not a string",
            ));
        }
    }
    Ok(layer)
}

/// The Sentinel keys of an env file, with the line each was last set on.
fn read_env_vars(path: &Path) -> Result<BTreeMap<&'static str, (String, usize)>, ConfigError> {
    let text = read_file(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut vars = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        // The plain resolver reports syntax errors; a bad line here only sets nothing.
        if let Ok(Some((key, value))) = parse_env_line(line)
            && let Some(&key) = SENTINEL_KEYS.iter().find(|&&known| known == key)
        {
            vars.insert(key, (value, index + 1));
        }
    }
    Ok(vars)
}

fn env_layer(vars: &BTreeMap<&'static str, (String, usize)>, file: Option<&Path>) -> Result<Layer, ConfigError> {
    let source = |key: &str| match file {
        Some(path) => Source::EnvFile(path.to_path_buf()),
        None => Source::Env(key.to_owned()),
    };
    let error = |key: &str, line: usize, value: String, problem: &str| match file {
        Some(path) => ConfigError::EnvFileValue {
            path: path.to_path_buf(),
            line,
            key: key.to_owned(),
            value,
            problem: problem.to_owned(),
        },
        None => ConfigError::EnvValue {
            var: key.to_owned(),
            value,
            problem: problem.to_owned(),
        },
    };
    let mut layer = Layer::default();
    if let Some((text, line)) = vars.get(REDIS_SENTINELS) {
        let list = parse_list(text).map_err(|p| error(REDIS_SENTINELS, *line, format!("{text:?}"), p))?;
        layer.sentinels = Some(Sourced {
            value: list,
            source: source(REDIS_SENTINELS),
        });
    }
    if let Some((name, line)) = vars.get(REDIS_MASTER_NAME) {
        let name = valid_name(name).map_err(|p| error(REDIS_MASTER_NAME, *line, format!("{name:?}"), p))?;
        layer.master_name = Some(Sourced {
            value: name,
            source: source(REDIS_MASTER_NAME),
        });
    }
    if let Some((password, _)) = vars.get(REDIS_SENTINEL_PASSWORD) {
        layer.password = Some(Sourced {
            value: Some(password.clone()).filter(|p| !p.is_empty()),
            source: source(REDIS_SENTINEL_PASSWORD),
        });
    }
    Ok(layer)
}

fn flag_layer(flags: &SentinelInputs) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    if !flags.sentinels.is_empty() {
        let mut list = Vec::new();
        for text in &flags.sentinels {
            list.extend(parse_list(text).map_err(|problem| ConfigError::FlagValue {
                flag: "--sentinel",
                value: format!("{text:?}"),
                problem: problem.to_owned(),
            })?);
        }
        layer.sentinels = Some(Sourced {
            value: list,
            source: Source::Flag("--sentinel"),
        });
    }
    if let Some(name) = &flags.master_name {
        let name = valid_name(name).map_err(|problem| ConfigError::FlagValue {
            flag: "--master-name",
            value: format!("{name:?}"),
            problem: problem.to_owned(),
        })?;
        layer.master_name = Some(Sourced {
            value: name,
            source: Source::Flag("--master-name"),
        });
    }
    if let Some(password) = &flags.sentinel_password {
        layer.password = Some(Sourced {
            value: Some(password.clone()).filter(|p| !p.is_empty()),
            source: Source::Flag("--sentinel-password"),
        });
    }
    Ok(layer)
}

#[cfg(all(test, feature = "yaml"))]
mod tests {
    use std::fs;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn inputs(dir: &Path, vars: &[(&str, &str)]) -> ConfigInputs {
        ConfigInputs {
            config: Some(dir.to_path_buf()),
            env: env(vars),
            default_env_file: std::path::PathBuf::new(),
            ..ConfigInputs::default()
        }
    }

    fn conf_dir(yaml: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("redis")).unwrap();
        fs::write(dir.path().join("redis/default.yaml"), yaml).unwrap();
        dir
    }

    #[test]
    fn yaml_env_and_flags_layer_with_sources() {
        let dir = conf_dir("host: eek\nsentinels: [eek:26379, 'hog', '[::1]:26380']\nmaster_name: robot\n");
        let yaml_path = dir.path().join("redis/default.yaml");
        let settings = resolve_sentinel(&inputs(dir.path(), &[]), &SentinelInputs::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            settings.sentinels.value,
            vec![
                ("eek".to_owned(), 26379),
                ("hog".to_owned(), 26379),
                ("::1".to_owned(), 26380)
            ]
        );
        assert_eq!(settings.sentinels.source, Source::ConfFile(yaml_path.clone()));
        assert_eq!(settings.master_name.value, "robot");
        assert_eq!(settings.password.source, Source::Default);

        let vars = [(REDIS_SENTINELS, "a:1,b:2"), (REDIS_SENTINEL_PASSWORD, "s3")];
        let settings = resolve_sentinel(&inputs(dir.path(), &vars), &SentinelInputs::default())
            .unwrap()
            .unwrap();
        assert_eq!(settings.sentinels.source, Source::Env(REDIS_SENTINELS.to_owned()));
        assert_eq!(settings.password.value.as_deref(), Some("s3"));
        assert_eq!(settings.master_name.source, Source::ConfFile(yaml_path));
        assert!(!format!("{settings:?}").contains("s3"));

        let flags = SentinelInputs {
            sentinels: vec!["x:9".to_owned(), "y".to_owned()],
            master_name: Some("m".to_owned()),
            sentinel_password: None,
        };
        let settings = resolve_sentinel(&inputs(dir.path(), &vars), &flags).unwrap().unwrap();
        assert_eq!(
            settings.sentinels.value,
            vec![("x".to_owned(), 9), ("y".to_owned(), 26379)]
        );
        assert_eq!(settings.sentinels.source, Source::Flag("--sentinel"));
        assert_eq!(settings.master_name.source, Source::Flag("--master-name"));
        let target = settings.target();
        assert_eq!(target.sentinels[0].password.as_deref(), Some("s3"));
        assert_eq!(target.to_string(), "master m via sentinel x:9,y:26379");
    }

    #[test]
    fn empty_env_turns_sentinel_off_and_nothing_means_none() {
        let dir = conf_dir("sentinels: eek:26379\n");
        let off = resolve_sentinel(
            &inputs(dir.path(), &[(REDIS_SENTINELS, "")]),
            &SentinelInputs::default(),
        );
        assert!(off.unwrap().is_none());
        let dir = conf_dir("host: eek\n");
        assert!(
            resolve_sentinel(&inputs(dir.path(), &[]), &SentinelInputs::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_values_name_their_source() {
        let dir = conf_dir("sentinels: [eek:notaport]\n");
        let err = resolve_sentinel(&inputs(dir.path(), &[]), &SentinelInputs::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("field \"sentinels\": \"eek:notaport\" is not a sentinel address"),
            "{err}"
        );
        let dir = conf_dir("host: eek\n");
        let err = resolve_sentinel(
            &inputs(dir.path(), &[(REDIS_MASTER_NAME, "a b")]),
            &SentinelInputs::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable REDIS_MASTER_NAME: \"a b\" is not a master name (one word of letters, digits, '-', '_' or '.')"
        );
        let flags = SentinelInputs {
            sentinels: vec!["h:0".to_owned()],
            ..SentinelInputs::default()
        };
        let err = resolve_sentinel(&inputs(dir.path(), &[]), &flags).unwrap_err();
        assert!(err.to_string().starts_with("flag --sentinel: \"h:0\""), "{err}");
    }
}

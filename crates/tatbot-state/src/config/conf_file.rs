//! The Hydra conf dir and the Redis YAML inside it (`redis/default.yaml`): where it is looked
//! for, how it is read into a [`Layer`], and the warning for keys it does not know.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[cfg(feature = "yaml")]
use serde_yaml_ng::Value;

use crate::config::layers::{Layer, non_empty_var};
#[cfg(feature = "yaml")]
use crate::config::layers::{parse_port, read_file, validate_host};
use crate::config::{CONF_DIR_VAR, ConfigError, ConfigInputs, INVENTORY_FILE};
#[cfg(feature = "yaml")]
use crate::config::{PORT_PROBLEM, Source, Sourced};

/// The conf dir in use and the Redis YAML inside it, if it has one (a conf dir with only
/// the node inventory still serves as the inventory).
pub(super) struct ConfLocation {
    pub(super) dir: PathBuf,
    pub(super) yaml: Option<PathBuf>,
}

fn redis_yaml_in(dir: &Path) -> PathBuf {
    dir.join("redis").join("default.yaml")
}

pub(super) fn find_conf(inputs: &ConfigInputs) -> Result<Option<ConfLocation>, ConfigError> {
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

#[cfg(feature = "yaml")]
pub(super) fn parse_yaml(path: &Path, text: &str) -> Result<Value, ConfigError> {
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

#[cfg(feature = "yaml")]
/// Renders a YAML value the way it would be written: strings quoted, scalars bare.
pub(super) fn render_yaml(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        other => yaml_kind(other).to_string(),
    }
}

#[cfg(feature = "yaml")]
/// Names a YAML value's kind without showing it, for values that may be secret.
pub(super) fn yaml_kind(value: &Value) -> &'static str {
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

#[cfg(feature = "yaml")]
pub(super) fn read_conf_yaml(path: &Path) -> Result<Layer, ConfigError> {
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

#[cfg(not(feature = "yaml"))]
/// Without the `yaml` feature a Redis YAML that resolution finds is refused rather than passed
/// over: passing over it would connect with defaults the file meant to change.
pub(super) fn read_conf_yaml(path: &Path) -> Result<Layer, ConfigError> {
    Err(ConfigError::YamlDisabled {
        path: path.to_path_buf(),
    })
}

#[cfg(feature = "yaml")]
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

#[cfg(feature = "yaml")]
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

#[cfg(feature = "yaml")]
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

#[cfg(feature = "yaml")]
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

#[cfg(all(test, feature = "yaml"))]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::config::testutil::*;
    use crate::config::*;

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
}

//! The env file and the process environment: finding the file, parsing its lines as a shell
//! would, and turning `REDIS_URL`, `REDIS_HOST` and friends into a [`Layer`].

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::layers::{Layer, non_empty_var, parse_port, read_file, validate_host};
use crate::config::url::{parse_redis_url, redact_url};
use crate::config::{
    ConfigError, ConfigInputs, DEFAULT_PORT, ENV_FILE_VAR, REDIS_HOST, REDIS_KEYS, REDIS_PASSWORD, REDIS_PORT,
    REDIS_URL, REDIS_USERNAME, Source, Sourced,
};

pub(super) fn find_env_file(inputs: &ConfigInputs) -> Result<Option<PathBuf>, ConfigError> {
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
pub(super) fn read_env_file(path: &Path) -> Result<BTreeMap<&'static str, (String, usize)>, ConfigError> {
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
pub(super) fn parse_env_line(line: &str) -> Result<Option<(&str, String)>, &'static str> {
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
pub(super) struct EnvVars<'a> {
    pub(super) file: Option<&'a Path>,
    pub(super) vars: BTreeMap<&'static str, (String, usize)>,
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
    pub(super) fn layer(&self) -> Result<Layer, ConfigError> {
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

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::config::testutil::*;
    use crate::config::*;

    #[cfg(feature = "yaml")]
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

    #[cfg(feature = "yaml")]
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
}

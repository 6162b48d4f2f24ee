//! The server's files and the rendering of `config/redis/redis.conf` for one host.
//!
//! The template is embedded in the binary, so `server start` works from any directory and
//! on a node without a checkout. Rendering replaces each `{{placeholder}}` and fails (a bug,
//! caught by the unit tests) if one is left over. Values that are paths or secrets are quoted
//! the way Redis's config parser (`sdssplitargs`) unquotes them, so a space or a quote in a
//! path can never inject a second directive.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The template, `config/redis/redis.conf` at the repository root.
pub const TEMPLATE: &str = include_str!("../../../../../config/redis/redis.conf");

/// Addresses always bound; `-` makes IPv6 loopback optional on hosts without IPv6.
const LOOPBACK_BIND: &str = "127.0.0.1 -::1";

/// Where one server keeps its files: everything under one base directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The base directory.
    pub base: PathBuf,
}

impl Layout {
    /// The rendered config file.
    pub fn conf(&self) -> PathBuf {
        self.base.join("redis.conf")
    }

    /// The data directory (`dir`): the AOF directory and RDB snapshots.
    pub fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    /// The server log.
    pub fn log(&self) -> PathBuf {
        self.base.join("redis.log")
    }

    /// The pid file Redis writes while it runs.
    pub fn pidfile(&self) -> PathBuf {
        self.base.join("redis.pid")
    }
}

/// Everything that varies between rendered configs.
#[derive(Debug)]
pub struct ConfSpec<'a> {
    /// Addresses bound besides loopback.
    pub extra_bind: &'a [IpAddr],
    /// The TCP port.
    pub port: u16,
    /// `daemonize yes` (for `server start`) or `no` (for a child process).
    pub daemonize: bool,
    /// The files.
    pub layout: &'a Layout,
    /// `requirepass`, if any.
    pub password: Option<&'a str>,
    /// `aclfile`, if any; must be absolute because Redis resolves it against its own cwd.
    pub acl_file: Option<&'a Path>,
}

/// Renders the template for `spec`.
///
/// # Errors
///
/// A path that is not UTF-8 (the config file is text).
pub fn render(spec: &ConfSpec<'_>) -> anyhow::Result<String> {
    let bind = bind_addresses(spec.extra_bind).join(" ");
    let mut auth = Vec::new();
    if let Some(password) = spec.password {
        auth.push(format!("requirepass {}", quote(password)));
    }
    if let Some(acl_file) = spec.acl_file {
        auth.push(format!("aclfile {}", quote(utf8(acl_file)?)));
    }
    if auth.is_empty() {
        auth.push("# (no password)".to_owned());
    }
    let values = [
        ("bind", bind),
        ("port", spec.port.to_string()),
        ("daemonize", if spec.daemonize { "yes" } else { "no" }.to_owned()),
        ("pidfile", quote(utf8(&spec.layout.pidfile())?)),
        ("logfile", quote(utf8(&spec.layout.log())?)),
        ("dir", quote(utf8(&spec.layout.data())?)),
        ("auth", auth.join("\n")),
    ];
    let mut text = TEMPLATE.to_owned();
    for (name, value) in values {
        text = text.replace(&format!("{{{{{name}}}}}"), &value);
    }
    if let Some(line) = text.lines().find(|line| line.contains("{{")) {
        anyhow::bail!("bug: the redis.conf template has an unknown placeholder in {line:?}");
    }
    Ok(text)
}

/// The `bind` entries: loopback, then each extra address once.
pub fn bind_addresses(extra: &[IpAddr]) -> Vec<String> {
    let mut bind: Vec<String> = LOOPBACK_BIND.split(' ').map(str::to_owned).collect();
    for address in extra.iter().filter(|address| !address.is_loopback()) {
        let text = address.to_string();
        if !bind.contains(&text) {
            bind.push(text);
        }
    }
    bind
}

/// The path as text, or an error naming it.
fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "path {} is not UTF-8: choose a base dir with --dir whose path is",
            path.display()
        )
    })
}

/// Quotes `raw` as one double-quoted Redis config argument.
pub fn quote(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 2);
    out.push('"');
    for c in raw.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            base: PathBuf::from("/srv/tat bot/\"state\""),
        }
    }

    /// Every placeholder is filled, loopback is always bound, and paths are quoted.
    #[test]
    fn renders_every_placeholder() {
        let layout = layout();
        let extra: Vec<IpAddr> = vec!["192.168.1.97".parse().unwrap(), "127.0.0.1".parse().unwrap()];
        let spec = ConfSpec {
            extra_bind: &extra,
            port: 6390,
            daemonize: true,
            layout: &layout,
            password: None,
            acl_file: None,
        };
        let text = render(&spec).unwrap();
        assert!(!text.contains("{{"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "bind 127.0.0.1 -::1 192.168.1.97",
            "port 6390",
            "protected-mode yes",
            "daemonize yes",
            "appendonly yes",
            "appendfsync everysec",
            r#"dir "/srv/tat bot/\"state\"/data""#,
            r#"pidfile "/srv/tat bot/\"state\"/redis.pid""#,
            "# (no password)",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        assert!(!lines.iter().any(|line| line.starts_with("requirepass")));
    }

    /// A password and an ACL file become quoted directives; newlines cannot break out.
    #[test]
    fn renders_auth() {
        let layout = layout();
        let acl = PathBuf::from("/etc/tatbot/users.acl");
        let spec = ConfSpec {
            extra_bind: &[],
            port: 6379,
            daemonize: false,
            layout: &layout,
            password: Some("p\"w\nbind 0.0.0.0"),
            acl_file: Some(&acl),
        };
        let text = render(&spec).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&r#"requirepass "p\"w\x0abind 0.0.0.0""#), "{text}");
        assert!(lines.contains(&r#"aclfile "/etc/tatbot/users.acl""#), "{text}");
        assert!(lines.contains(&"daemonize no"), "{text}");
        assert!(lines.contains(&"bind 127.0.0.1 -::1"), "{text}");
    }

    /// The template keeps the seed's settings.
    #[test]
    fn template_has_seed_settings() {
        for directive in [
            "protected-mode yes",
            "appendonly yes",
            "appendfsync everysec",
            "bind {{bind}}",
            "port {{port}}",
        ] {
            assert!(TEMPLATE.lines().any(|line| line == directive), "{directive}");
        }
    }
}

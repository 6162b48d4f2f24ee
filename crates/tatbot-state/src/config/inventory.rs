//! The node inventory `nodes.yaml`: the IP of a host name that does not resolve.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[cfg(feature = "yaml")]
use serde_yaml_ng::Value;

#[cfg(feature = "yaml")]
use crate::config::conf_file::{parse_yaml, render_yaml, yaml_kind};
#[cfg(feature = "yaml")]
use crate::config::layers::read_file;
use crate::config::{ConfigError, INVENTORY_FILE, Sourced};

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

/// Decides what to dial: an IP literal or a resolving name as is, otherwise
/// the node inventory's IP for that name.
pub(super) fn connect_target(
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

#[cfg(feature = "yaml")]
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

#[cfg(not(feature = "yaml"))]
/// Without the `yaml` feature the inventory cannot be read, so a host that needs it is refused
/// with that reason rather than reported as missing from it.
fn inventory_ip(path: &Path, _name: &str) -> Result<Option<IpAddr>, ConfigError> {
    Err(ConfigError::YamlDisabled {
        path: path.to_path_buf(),
    })
}

#[cfg(all(test, feature = "yaml"))]
mod tests {
    use std::fs;

    use tempfile::TempDir;

    use super::*;
    use crate::config::testutil::*;
    use crate::config::*;

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
}

//! [`ConfigError`]: why a Redis target could not be resolved, one variant per kind of source.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::Source;

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
    /// A Redis YAML or node inventory that resolution needs, in a build without the `yaml`
    /// feature (see the crate docs); it is refused rather than passed over.
    #[error(
        "{}: reading YAML is not built in (enable the tatbot-state feature \"yaml\" to read it)",
        path.display()
    )]
    YamlDisabled {
        /// The YAML file that would have been read.
        path: PathBuf,
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

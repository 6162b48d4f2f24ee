//! `tatbot-state config`: the resolved Redis target and where each field came from.
//!
//! Resolution is [`tatbot_state::config::resolve`] (flags > environment > env file > YAML >
//! default); this command only shows its result, with the password redacted. It never connects,
//! so it works when Redis is down. An invalid configuration fails with exit code 6 and names the
//! offending source, as every other command would; a host that does not resolve (nor stands in
//! the node inventory) still prints the table first, so the operator sees where the name came
//! from and which conf dir was looked at, then the reason. With Sentinel settings
//! (`--sentinel`, `REDIS_SENTINELS`, the YAML's `sentinels`), their rows follow the plain
//! target's.

use std::io::Write as _;

use serde_json::{Map, Value, json};
use tatbot_state::config::{self, ConfigError, RedisTarget};

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::table;

/// Flags of `config`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `config`.
pub async fn run(global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    // A host that does not resolve still gets its table (which source named it, which conf
    // dir and inventory were looked at), then the reason as the error line, exit 6.
    let (target, unresolvable) = match global.target() {
        Ok(target) => (target, None),
        Err(err) if matches!(err.downcast_ref(), Some(ConfigError::Unresolvable { .. })) => {
            (config::resolve_unchecked(&global.config_inputs())?, Some(err))
        }
        Err(err) => return Err(err),
    };
    print(global, &target, unresolvable.is_some())?;
    match unresolvable {
        Some(err) => Err(err),
        None => Ok(exit::SUCCESS),
    }
}

/// Prints the fields and their sources; `unresolved` marks the connect row as not resolving.
fn print(global: &GlobalArgs, target: &RedisTarget, unresolved: bool) -> anyhow::Result<()> {
    let mut rows = target.describe();
    if unresolved {
        for (field, _, source) in &mut rows {
            if *field == "connect" {
                *source = "does not resolve (see below)".to_owned();
            }
        }
    }
    if let Some(sentinel) = global.sentinel()? {
        rows.extend(sentinel.describe());
    }
    let mut out = std::io::stdout().lock();
    if global.json {
        let mut fields = Map::new();
        for (field, value, source) in &rows {
            let source = if source.is_empty() {
                Value::Null
            } else {
                Value::String(source.clone())
            };
            fields.insert(field.replace(' ', "_"), json!({"value": value, "source": source}));
        }
        fields.insert("summary".to_owned(), Value::String(target.display_redacted()));
        writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(fields))?)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(field, value, source)| vec![field.to_owned(), value, source])
        .collect();
    write!(out, "{}", table(&["FIELD", "VALUE", "SOURCE"], &rows))?;
    out.flush()?;
    Ok(())
}

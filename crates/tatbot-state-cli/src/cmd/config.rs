//! `tatbot-state config`: the resolved Redis target and where each field came from.
//!
//! Resolution is [`tatbot_state::config::resolve`] (flags > environment > env file > YAML >
//! default); this command only shows its result, with the password redacted. It never connects,
//! so it works when Redis is down. An invalid configuration fails with exit code 6 and names the
//! offending source, as every other command would. With Sentinel settings (`--sentinel`,
//! `REDIS_SENTINELS`, the YAML's `sentinels`), their rows follow the plain target's.

use std::io::Write as _;

use serde_json::{Map, Value, json};

use crate::cmd::status::table;
use crate::ctx::GlobalArgs;
use crate::exit;

/// Flags of `config`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `config`.
pub async fn run(global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    let target = global.target()?;
    let mut rows = target.describe();
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
        return Ok(exit::SUCCESS);
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(field, value, source)| vec![field.to_owned(), value, source])
        .collect();
    write!(out, "{}", table(&["FIELD", "VALUE", "SOURCE"], &rows))?;
    Ok(exit::SUCCESS)
}

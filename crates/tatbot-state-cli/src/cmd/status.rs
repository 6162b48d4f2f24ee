//! `tatbot-state status`: the system summary, and the small text helpers the read commands share.
//!
//! The summary comes from [`tatbot_state::StateManager::system_status`], which never fails once
//! connected: a server that stops answering gives `Redis Connected: false` with the reason (and
//! exit code 3), and values that do not decode are listed with their keys instead of failing the
//! summary. The line labels `Redis Connected`, `Active Sessions` and `Nodes Online` are the ones
//! the old Python tools printed, so scripts that grep them keep working.
//!
//! [`table`], [`shown`], [`format_age`] and [`age_secs`] are used by `health`, `sessions` and
//! `watch` too; they live here until the CLI grows an output module. Every text view passes
//! stored text through [`shown`] (or [`table`], which does it per cell), so control characters
//! any writer stored are escaped and long values cut before they reach a terminal.

use std::io::Write as _;

use tatbot_state::Timestamp;
use tatbot_state::model::MAX_FUTURE_SKEW;

use crate::ctx::GlobalArgs;
use crate::exit;

/// Flags of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `status`.
pub async fn run(global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    let manager = global.manager().await?;
    let status = manager.system_status().await;
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        writeln!(out, "Redis Connected: {}", status.redis_connected)?;
        writeln!(
            out,
            "Redis Version: {}",
            status.redis_version.as_deref().unwrap_or("unknown")
        )?;
        writeln!(out, "Active Sessions: {}", status.active_sessions)?;
        writeln!(out, "Paused Sessions: {}", status.paused_sessions)?;
        writeln!(out, "Stale Sessions: {}", status.stale_sessions)?;
        writeln!(out, "Total Sessions: {}", status.total_sessions)?;
        writeln!(out, "Nodes Online: {}/{}", status.nodes_online, status.nodes_known)?;
        writeln!(out, "Producers Active: {}", status.producers_active)?;
        writeln!(out, "Dropped Updates: {}", status.dropped_updates)?;
        writeln!(out, "Rejected Updates: {}", status.rejected_updates)?;
        writeln!(out, "Restored Sessions: {}", status.restored_sessions)?;
        if !status.corrupt.is_empty() {
            writeln!(out, "Corrupt Entries: {}", status.corrupt.len())?;
            for corrupt in &status.corrupt {
                writeln!(out, "  {}: {}", shown(&corrupt.key), shown(&corrupt.error))?;
            }
        }
        if let Some(error) = &status.error {
            writeln!(out, "Error: {}", shown(error))?;
        }
    }
    if !status.redis_connected {
        return Ok(exit::UNREACHABLE);
    }
    Ok(exit::SUCCESS)
}

pub use tatbot_state::text::{shown, table};

/// Seconds from `then` to now (negative when `then` is in the future, as with clock skew).
pub fn age_secs(then: Timestamp) -> f64 {
    (Timestamp::now().unix_millis() - then.unix_millis()) as f64 / 1000.0
}

/// A short human age: `4.2s`, `12m`, `3h`, `2d`; `invalid` for a time more than
/// [`MAX_FUTURE_SKEW`] in the future (a small negative age is clock skew and shown as it is).
pub fn format_age(secs: f64) -> String {
    match secs {
        s if s < -MAX_FUTURE_SKEW.as_secs_f64() => "invalid".to_owned(),
        s if s < 60.0 => format!("{s:.1}s"),
        s if s < 3600.0 => format!("{}m", (s / 60.0).floor()),
        s if s < 86_400.0 => format!("{}h", (s / 3600.0).floor()),
        s => format!("{}d", (s / 86_400.0).floor()),
    }
}

/// How long ago `then` was, as `4.2s ago`, or `invalid: in the future` (see [`format_age`]).
pub fn format_ago(then: Timestamp) -> String {
    match format_age(age_secs(then)) {
        age if age == "invalid" => "invalid: in the future".to_owned(),
        age => format!("{age} ago"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns line up, and a short row's last cell neither pads nor widens its column.
    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["hog".to_owned(), "yes".to_owned(), "1.0s".to_owned()],
            vec!["broken".to_owned(), "a long error message".to_owned()],
        ];
        let text = table(&["NODE", "ONLINE", "AGE"], &rows);
        assert_eq!(
            text,
            "NODE    ONLINE  AGE\nhog     yes     1.0s\nbroken  a long error message\n"
        );
    }

    /// Ages pick the largest whole unit past a minute.
    #[test]
    fn ages_are_short() {
        assert_eq!(format_age(4.24), "4.2s");
        assert_eq!(format_age(125.0), "2m");
        assert_eq!(format_age(7300.0), "2h");
        assert_eq!(format_age(200_000.0), "2d");
        assert_eq!(format_age(-2.0), "-2.0s");
        assert_eq!(format_age(-251_605_787_626.3), "invalid");
    }
}

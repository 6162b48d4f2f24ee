//! `tatbot-state events` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `events`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `events`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("events is not implemented yet")
}

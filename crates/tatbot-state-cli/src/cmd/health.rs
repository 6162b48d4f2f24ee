//! `tatbot-state health` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `health`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `health`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("health is not implemented yet")
}

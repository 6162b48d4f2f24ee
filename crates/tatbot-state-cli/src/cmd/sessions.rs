//! `tatbot-state sessions` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `sessions`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `sessions`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("sessions is not implemented yet")
}

//! `tatbot-state progress` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `progress`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `progress`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("progress is not implemented yet")
}

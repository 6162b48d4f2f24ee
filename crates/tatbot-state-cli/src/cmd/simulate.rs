//! `tatbot-state simulate` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `simulate`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("simulate is not implemented yet")
}

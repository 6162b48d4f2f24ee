//! `tatbot-state config` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `config`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `config`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("config is not implemented yet")
}

//! `tatbot-state history` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `history`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `history`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("history is not implemented yet")
}

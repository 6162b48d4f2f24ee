//! `tatbot-state server` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `server`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `server`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("server is not implemented yet")
}

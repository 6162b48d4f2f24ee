//! `tatbot-state heartbeat` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `heartbeat`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `heartbeat`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("heartbeat is not implemented yet")
}

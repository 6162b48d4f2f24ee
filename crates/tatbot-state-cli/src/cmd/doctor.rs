//! `tatbot-state doctor` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `doctor`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("doctor is not implemented yet")
}

//! `tatbot-state status` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `status`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("status is not implemented yet")
}

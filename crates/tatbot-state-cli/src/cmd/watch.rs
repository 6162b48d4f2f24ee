//! `tatbot-state watch` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `watch`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `watch`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("watch is not implemented yet")
}

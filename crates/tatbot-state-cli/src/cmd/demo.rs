//! `tatbot-state demo` (not written yet).

use crate::ctx::GlobalArgs;

/// Flags of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `demo`.
pub async fn run(_global: &GlobalArgs, _args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("demo is not implemented yet")
}

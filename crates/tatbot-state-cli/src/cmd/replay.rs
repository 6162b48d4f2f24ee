//! `tatbot-state replay FILE.mcap [--rate R] [--into redis://..]`: plays a recording back.
//!
//! The file is read and checked whole first ([`read_recording`]): a file that is not MCAP, is
//! truncated or has a channel we do not know is a one-line error before anything is written.
//! Then [`replay`] writes it with the original timing divided by `--rate`.
//!
//! By default it goes into a private `redis-server` started on a free loopback port, with the
//! original ids; the server stays up after the replay until Ctrl-C so the dashboard, the
//! monitor, MCP and `watch` can be pointed at it (`--exit-when-done` stops it at the end).
//! With `--into` it goes into that server with every node and session id prefixed by
//! `--id-prefix` (default `replay.`), so it never writes a live session's or node's keys, and
//! without the parameter changes, which would rewrite the live audit log (docs/WIRE.md, Replay).

use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tatbot_state::record::replay::{ReplayOptions, read_recording, replay};
use tatbot_state::{CancellationToken, config};
use tokio::signal::unix::{SignalKind, signal};

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::private_server::PrivateServer;

/// The id prefix a replay into a given server uses unless told otherwise.
const DEFAULT_PREFIX: &str = "replay.";
/// The largest file read (it is checked whole in memory first).
const MAX_FILE_BYTES: u64 = 4 << 30;

/// Flags of `replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recording (written by `tatbot-state record`)
    #[arg(value_name = "FILE.mcap")]
    pub file: PathBuf,
    /// Speed: 1 plays with the original timing, 10 ten times faster
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub rate: f64,
    /// Replay into this server instead of a private one (ids get --id-prefix)
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub into: Option<String>,
    /// Prefix for node and session ids [default: "replay." with --into, none otherwise]
    #[arg(long, value_name = "PREFIX")]
    pub id_prefix: Option<String>,
    /// Stop the private server when the replay ends instead of waiting for Ctrl-C
    #[arg(long)]
    pub exit_when_done: bool,
}

/// Runs `replay`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(tatbot_state::Error::Recording(format!(
            "{}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit; split the recording",
            args.file.display()
        ))
        .into());
    }
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let recording = read_recording(&bytes).with_context(|| format!("{}", args.file.display()))?;
    drop(bytes);
    if recording.corrupt > 0 {
        eprintln!("warning: {} messages do not decode and are skipped", recording.corrupt);
    }

    let (endpoint, private) = match &args.into {
        Some(url) => {
            let endpoint = config::endpoint_from_url(url)
                .map_err(|problem| tatbot_state::Error::InvalidInput(format!("--into {problem}")))?;
            (endpoint, None)
        }
        None => {
            let server = PrivateServer::start("tatbot-replay-").await?;
            (server.endpoint(), Some(server))
        }
    };
    let options = ReplayOptions {
        rate: args.rate,
        id_prefix: args.id_prefix.clone().unwrap_or_else(|| {
            if private.is_some() {
                String::new()
            } else {
                DEFAULT_PREFIX.to_owned()
            }
        }),
        params: private.is_some(),
    };
    let manager = global.manager_for(endpoint.clone()).await?;
    // Registered before the first line: a signal sent right after it must find the handler.
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    println!(
        "replaying {} messages into redis://{endpoint}/ at rate {}",
        recording.items.len(),
        args.rate
    );

    let cancel = CancellationToken::new();
    let watcher = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            cancel.cancel();
        })
    };
    let bar = ProgressBar::with_draw_target(Some(recording.items.len() as u64), ProgressDrawTarget::stderr());
    // The template is a constant; should it ever fail to parse, the default style is fine.
    if let Ok(style) = ProgressStyle::with_template("replaying [{bar:40}] {pos}/{len} messages eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let outcome = replay(&manager, &recording, &options, &cancel, |done| bar.set_position(done)).await;
    bar.finish_and_clear();
    let stats = outcome?;
    println!(
        "replayed {} messages{}{}",
        stats.written,
        if stats.skipped > 0 {
            format!(", skipped {}", stats.skipped)
        } else {
            String::new()
        },
        if stats.cancelled { " (interrupted)" } else { "" }
    );
    if let Some(server) = private {
        if !args.exit_when_done && !stats.cancelled {
            println!(
                "the private server stays up at {endpoint} until Ctrl-C (tatbot-state -p {} viz)",
                endpoint.port
            );
            cancel.cancelled().await;
        }
        server.stop().await?;
    }
    watcher.abort();
    Ok(exit::SUCCESS)
}

//! `tatbot-state record [SESSION ...|--all] -o FILE.mcap [--follow]`: sessions to an MCAP file.
//!
//! The library's [`Recorder`] reads what Redis holds (and with `--follow` what arrives until the
//! sessions end) and [`McapSink`] writes it, one JSON channel per topic with its JSON Schema
//! (docs/OPERATIONS.md, Recording). Ctrl-C or SIGTERM stop a live recording and still finish the
//! file (summary and indexes), so it is always valid. Corrupt entries are counted, warned about
//! and skipped. A progress bar on stderr shows long exports. What Redis holds is written as it
//! is read ([`Recorder::backlog_with`]), so a long session is never held in memory whole.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tatbot_state::SessionId;
use tatbot_state::record::{McapSink, Recorder, Selection};
use tokio::signal::unix::{SignalKind, signal};

use crate::ctx::GlobalArgs;
use crate::exit;

/// Flags of `record`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sessions to record
    #[arg(value_name = "SESSION")]
    pub sessions: Vec<String>,
    /// Record every session and everything else Redis holds
    #[arg(long, conflicts_with = "sessions")]
    pub all: bool,
    /// The MCAP file to write (replaced if it exists)
    #[arg(short = 'o', long, value_name = "FILE.mcap")]
    pub output: PathBuf,
    /// Keep recording until the sessions end (with --all: until Ctrl-C)
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// Runs `record`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    let selection = if args.all {
        Selection::All
    } else if args.sessions.is_empty() {
        return Err(tatbot_state::Error::InvalidInput(
            "name the sessions to record, or pass --all; `tatbot-state sessions` lists them".to_owned(),
        )
        .into());
    } else {
        let sessions = args
            .sessions
            .iter()
            .map(|session| SessionId::new(session.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        Selection::Sessions(sessions)
    };
    let manager = global.manager().await?;
    let mut recorder = Recorder::new(&manager, selection).await?;
    let file = File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let mut sink = McapSink::new(BufWriter::new(file))?;

    // Written as it is read: the streams are merged in log-time order, a few pages at a time.
    let bar = progress_bar(recorder.backlog_len().await?);
    recorder
        .backlog_with(|message| {
            bar.inc(1);
            sink.write(&message)
        })
        .await?;
    bar.finish_and_clear();

    if args.follow && !recorder.finished() {
        // Registered before saying so: a signal sent right after the line must find the handler.
        let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        eprintln!(
            "recording live to {} until the sessions end (Ctrl-C stops)",
            args.output.display()
        );
        while !recorder.finished() {
            let batch = tokio::select! {
                batch = recorder.next_live() => batch?,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            };
            for message in &batch {
                sink.write(message)?;
            }
        }
    }
    let out = sink.finish()?;
    out.into_inner()
        .map_err(|err| err.into_error())
        .and_then(|file| file.sync_all())
        .with_context(|| format!("writing {}", args.output.display()))?;
    report(global, &recorder, &args.output);
    Ok(exit::SUCCESS)
}

/// A bar on stderr when it is a terminal (indicatif draws nothing otherwise).
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    // The template is a constant; should it ever fail to parse, the default style is fine.
    if let Ok(style) = ProgressStyle::with_template("recording [{bar:40}] {pos}/{len} messages {per_sec} eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn report(global: &GlobalArgs, recorder: &Recorder, output: &std::path::Path) {
    let stats = recorder.stats();
    let total: u64 = stats.messages.values().sum();
    if global.json {
        let summary = serde_json::json!({
            "file": output.display().to_string(),
            "messages": total,
            "per_topic": stats.messages,
            "corrupt": stats.corrupt,
        });
        println!("{summary}");
    } else {
        let per_topic: Vec<String> = stats.messages.iter().map(|(topic, n)| format!("{topic} {n}")).collect();
        println!(
            "recorded {total} messages to {} ({})",
            output.display(),
            per_topic.join(", ")
        );
    }
    if stats.corrupt > 0 {
        eprintln!(
            "warning: skipped {} corrupt entries (run with -v to see each)",
            stats.corrupt
        );
    }
}

//! One module per subcommand, dispatched from [`Command`].
//!
//! Each module has an `Args` struct (its flags) and `pub async fn run(global: &GlobalArgs,
//! args: Args) -> anyhow::Result<u8>` returning the exit code on success.

mod bench;
mod config;
mod demo;
mod doctor;
mod events;
pub mod examples;
mod foxglove;
mod health;
mod heartbeat;
mod history;
mod mcp;
mod monitor;
mod param;
mod progress;
mod record;
mod replay;
mod robot;
pub(crate) mod server;
mod sessions;
mod simulate;
mod status;
mod viz;
mod watch;

use clap::{Parser, Subcommand};

use crate::ctx::GlobalArgs;

/// Run, watch and diagnose tatbot's Redis state server.
#[derive(Debug, Parser)]
#[command(name = "tatbot-state", version, disable_help_flag = true, after_help = crate::exit::HELP)]
pub struct Cli {
    /// Print help
    #[arg(long, global = true, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage a local redis-server with the project's config (start, stop, status, repair after a crash, sentinel)
    Server(server::Args),
    /// Run a complete local demo on a private redis-server
    Demo(demo::Args),
    /// Show the system summary
    Status(status::Args),
    /// Show one node's health, or a table of all nodes
    Health(health::Args),
    /// Show one robot's state, or a table of all robots
    Robot(robot::Args),
    /// List active and recent stroke sessions
    Sessions(sessions::Args),
    /// Show one session's progress (default: the latest active session)
    Progress(progress::Args),
    /// Print events as they arrive
    Events(events::Args),
    /// Print a session's history stream
    History(history::Args),
    /// Get, set, list, watch and load runtime parameters
    Param(param::Args),
    /// Live progress bars for every active session
    Watch(watch::Args),
    /// Serve the live web dashboard
    Viz(viz::Args),
    /// Live terminal monitor
    Monitor(monitor::Args),
    /// Simulate a robot executing a stroke session
    Simulate(simulate::Args),
    /// Run the node heartbeat agent
    Heartbeat(heartbeat::Args),
    /// Serve read-only state resources over MCP (stdio or streamable HTTP)
    Mcp(mcp::Args),
    /// Print the resolved Redis target and where each field came from
    Config(config::Args),
    /// Diagnose connection problems, one verdict per check
    Doctor(doctor::Args),
    /// Measure latency and throughput against a baseline on the same server
    Bench(bench::Args),
    /// Record sessions to an MCAP file (history, events, robot state, health, errors, parameters)
    Record(record::Args),
    /// Play an MCAP recording back into a Redis with its original timing
    Replay(replay::Args),
    /// Serve the live state over the Foxglove WebSocket protocol
    Foxglove(foxglove::Args),
}

/// Dispatches to the subcommand; returns its exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let global = &cli.global;
    match cli.command {
        Command::Server(args) => server::run(global, args).await,
        Command::Demo(args) => demo::run(global, args).await,
        Command::Status(args) => status::run(global, args).await,
        Command::Health(args) => health::run(global, args).await,
        Command::Robot(args) => robot::run(global, args).await,
        Command::Sessions(args) => sessions::run(global, args).await,
        Command::Progress(args) => progress::run(global, args).await,
        Command::Events(args) => events::run(global, args).await,
        Command::History(args) => history::run(global, args).await,
        Command::Param(args) => param::run(global, args).await,
        Command::Watch(args) => watch::run(global, args).await,
        Command::Viz(args) => viz::run(global, args).await,
        Command::Monitor(args) => monitor::run(global, args).await,
        Command::Simulate(args) => simulate::run(global, args).await,
        Command::Heartbeat(args) => heartbeat::run(global, args).await,
        Command::Mcp(args) => mcp::run(global, args).await,
        Command::Config(args) => config::run(global, args).await,
        Command::Doctor(args) => doctor::run(global, args).await,
        Command::Bench(args) => bench::run(global, args).await,
        Command::Record(args) => record::run(global, args).await,
        Command::Replay(args) => replay::run(global, args).await,
        Command::Foxglove(args) => foxglove::run(global, args).await,
    }
}

//! `tatbot-state`: tatbot's shared state on Redis, wire-compatible with the Python nodes.
//!
//! Several machines of the robot (arms, cameras, GPU boxes, screens) share live state through
//! one Redis server. This crate is how a Rust node reads and writes it.
//!
//! # Layout
//!
//! - [`StateManager`] ([`manager`]): stroke sessions, progress, robot state, node health, events,
//!   errors and the system summary; every write that touches several keys is one atomic round trip.
//! - [`Producer`] ([`producer`]): the robot's write path; calls queue and return at once, a
//!   background writer pipelines, coalesces, bounds memory and replays after a Redis restart.
//! - [`Subscription`] ([`subscribe`]): typed pub/sub events on a connection of their own.
//! - [`model`]: serde types for every document and event of the wire contract.
//! - [`keys`]: the key schema, the only place key names are built.
//! - `heartbeat` (feature `heartbeat`, default): the node heartbeat agent, filled from real
//!   system metrics.
//! - [`follow`]: a consistent snapshot, then every change, resumable from a cursor.
//! - `record` (feature `record`): recordings as timed JSON messages, MCAP files and replay.
//! - [`params`]: typed, validated runtime parameters with compare-and-set, audit and watch.
//! - [`Redacted`]: how every secret (password, token) shows in `Debug` output.
//! - [`config`]: resolving the Redis target from YAML, env files, environment and flags.
//! - [`connection`]: [`Endpoint`], [`ManagerConfig`] and their defaults.
//! - [`sentinel`]: finding the master through Redis Sentinel and following its failovers.
//! - `http` (feature `http`): the Host/Origin/token guard and the connection-limited server
//!   that the dashboard and the MCP server share.
//!
//! # Features
//!
//! | feature | default | what it adds | dependencies |
//! |---|---|---|---|
//! | `heartbeat` | on | the node heartbeat agent (`heartbeat`, `StateManager::heartbeat`) | sysinfo |
//! | `yaml` | on | the Hydra conf file `redis/default.yaml` and the node inventory `nodes.yaml` in [`config`]; parameter `load`, `plan_load`, `dump` and `Param::parse_value` in [`params`] | serde_yaml_ng |
//! | `http` | off | `http`: the guard and server the dashboard and the MCP server share | axum, hyper |
//! | `record` | off | `record`: MCAP recording and replay | mcap, schemars |
//!
//! A robot that only writes state builds with `default-features = false`. Without `yaml`,
//! resolution refuses a conf file or inventory it finds with
//! [`ConfigError::YamlDisabled`](config::ConfigError::YamlDisabled) rather than passing over it;
//! the binaries of this workspace enable every feature they use explicitly.
//!
//! The wire contract is `docs/WIRE.md` in the repository.

pub mod backoff;
pub mod config;
pub mod connection;
mod decode;
mod direct;
mod error;
mod fastpath;
pub mod follow;
#[cfg(feature = "heartbeat")]
pub mod heartbeat;
#[cfg(feature = "http")]
pub mod http;
mod ids;
pub mod keys;
pub mod manager;
pub mod model;
mod ops;
pub mod params;
pub mod producer;
mod pyjson;
#[cfg(feature = "record")]
pub mod record;
mod redacted;
mod scripts;
pub mod sentinel;
pub mod subscribe;
pub mod text;
mod timestamp;

pub use connection::{Endpoint, ManagerConfig};
pub use error::{Error, Report, Result};
pub use follow::{Cursor, FollowItem, Follower, Scope, Snapshot};
pub use ids::{Category, EntryId, MAX_ID_LEN, NodeId, SessionId};
pub use manager::{CorruptEntry, Entry, Lookup, SessionInfo, StateManager, SystemStatus};
pub use model::{HistoryCursor, KnownNode, ProgressUpdate, SessionPlan};
pub use params::{Descriptor, Param, ParamName, ParamType, ParamValue, Params};
pub use producer::{Producer, ProducerConfig, ProducerStats, Wake, WakeStats};
pub use redacted::Redacted;
pub use subscribe::{Message, Subscription, SubscriptionCounts};
pub use timestamp::Timestamp;

/// Re-exported so callers can pass cancellation tokens without a direct dependency.
pub use tokio_util::sync::CancellationToken;

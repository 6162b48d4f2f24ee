//! Resolution of the Redis target that every tatbot binary connects to.
//!
//! The host, port, password and username are layered from five sources, lowest
//! precedence first: the built-in default, the Hydra YAML `redis/default.yaml`
//! in the conf dir, an env file, the process environment and explicit flags.
//! Each resolved field remembers which source won so that a `config` command
//! can explain the result.
//!
//! After the layering, a host name that does not resolve (the robot's HOME and
//! EDGE networks have no shared DNS) is looked up in the node inventory
//! `nodes.yaml` in the same conf dir, and its IP is used instead. A conf dir with
//! the inventory but no `redis/default.yaml` still counts, for the inventory.
//!
//! Keys of the Redis YAML that are neither read here nor Hydra's own (`defaults`,
//! `_target_`, ...) are logged as warnings, with the likely intended key.
//!
//! A Sentinel target (`sentinels`, `master_name`, `sentinel_password`) is resolved beside it,
//! from the same sources, by [`resolve_sentinel`] (module `ha`).
//!
//! [`resolve`] never reads the process environment or the real working
//! directory itself: everything comes in through [`ConfigInputs`], which keeps
//! it testable without mutating global state.
//!
//! # Layout
//!
//! - `inputs`: [`ConfigInputs`] and its builder.
//! - `layers`: [`Source`], [`Sourced`], one source's layer, the flag layer, host and port checks.
//! - `conf_file`: finding the conf dir and reading `redis/default.yaml` into a layer.
//! - `env_file`: the env file and the process environment's `REDIS_*` variables.
//! - `url`: `redis://` URLs, redaction and percent-encoding.
//! - `inventory`: the node inventory `nodes.yaml` and [`InventoryFallback`].
//! - `resolution`: [`resolve`] and the [`RedisTarget`] it answers with.
//! - `error`: [`ConfigError`].
//! - `ha`: the Sentinel target, [`resolve_sentinel`].

mod conf_file;
mod env_file;
mod error;
mod ha;
mod inputs;
mod inventory;
mod layers;
mod resolution;
#[cfg(test)]
mod testutil;
mod url;

pub use self::error::ConfigError;
pub use self::ha::{SentinelInputs, SentinelSettings, resolve_sentinel};
pub use self::inputs::ConfigInputs;
pub use self::inventory::InventoryFallback;
pub use self::layers::{Source, Sourced};
pub use self::resolution::{RedisTarget, resolve, resolve_host_system, resolve_unchecked};
pub use self::url::endpoint_from_url;

// The helpers the Sentinel resolver (`ha`) shares with the plain one.
use self::conf_file::find_conf;
#[cfg(feature = "yaml")]
use self::conf_file::{parse_yaml, render_yaml};
use self::env_file::{find_env_file, parse_env_line};
use self::layers::{read_file, validate_host};

/// Host used when no source names one.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// Port used when no source names one; also the port of a `redis://` URL without one.
pub const DEFAULT_PORT: u16 = 6379;

/// Env file read when it exists and neither `--env-file` nor `TATBOT_ENV_FILE` names one.
pub const DEFAULT_ENV_FILE: &str = "/nfs/tatbot/.env";

/// Environment variable naming the Hydra conf dir.
pub const CONF_DIR_VAR: &str = "TATBOT_CONF_DIR";

/// Environment variable naming the env file.
pub const ENV_FILE_VAR: &str = "TATBOT_ENV_FILE";

/// File name of the node inventory inside the conf dir.
pub const INVENTORY_FILE: &str = "nodes.yaml";

/// The environment keys that carry Redis settings; every other key is ignored.
const REDIS_URL: &str = "REDIS_URL";
const REDIS_HOST: &str = "REDIS_HOST";
const REDIS_PORT: &str = "REDIS_PORT";
const REDIS_PASSWORD: &str = "REDIS_PASSWORD";
const REDIS_USERNAME: &str = "REDIS_USERNAME";
const REDIS_KEYS: [&str; 5] = [REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_USERNAME];

const PORT_PROBLEM: &str = "is not a port (1-65535)";
const URL_FORM: &str = "expected redis://[user[:pass]@]host[:port][/db]";

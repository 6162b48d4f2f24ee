//! Integration tests of the library against real, throwaway redis-server processes.
//!
//! One test binary (ripgrep's layout) to save link time; each test starts its own server.

mod connect;
mod corrupt;
mod events;
mod failover;
mod follow;
mod golden;
mod health;
mod params;
mod props;
mod reliability;
mod roles;
mod sessions;
mod util;

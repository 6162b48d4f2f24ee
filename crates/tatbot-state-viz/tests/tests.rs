//! Tests of the dashboard server against real, throwaway redis-server processes.
//!
//! One test binary to save link time; each test starts its own server and serves the app on
//! a free loopback port.

mod hardening;
mod http;
mod hub;
mod server;

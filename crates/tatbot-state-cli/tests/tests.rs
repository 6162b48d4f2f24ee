//! End-to-end tests of the `tatbot-state` binary against test-kit Redis servers.

mod demo;
mod doctor;
mod read;
mod server;
mod simulate;
mod util;

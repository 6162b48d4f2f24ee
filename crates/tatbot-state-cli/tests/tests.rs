//! End-to-end tests of the `tatbot-state` binary against test-kit Redis servers.

mod bench;
mod demo;
mod doctor;
mod mcp;
mod param;
mod read;
mod record;
mod server;
mod simulate;
mod util;
mod viz;
mod webdriver;

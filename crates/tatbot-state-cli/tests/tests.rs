//! End-to-end tests of the `tatbot-state` binary against test-kit Redis servers.

mod bench;
mod boot;
mod demo;
mod doctor;
mod errors;
mod ha;
mod hostile;
mod mcp;
mod papercuts;
mod param;
mod read;
mod record;
mod server;
mod simulate;
mod stale;
mod systemd;
mod util;
mod viz;
mod webdriver;

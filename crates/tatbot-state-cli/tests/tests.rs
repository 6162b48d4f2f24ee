//! End-to-end tests of the `tatbot-state` binary against test-kit Redis servers.

mod util;

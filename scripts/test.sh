#!/usr/bin/env bash
# Runs the whole test suite against real redis-server processes that the tests start
# themselves (free loopback ports, temp dirs), and a headless Chromium for the dashboard test.
# Installs redis-server and chromium first when they are missing.
# Extra arguments go to the test runner (for example a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
# Doc tests first (nextest does not run them), so the suite's summary is the last thing printed.
cargo test --workspace --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi

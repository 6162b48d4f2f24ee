#!/usr/bin/env bash
# Runs the local demo: a private redis-server, two heartbeat agents, a simulated robot, the live
# viz and the MCP server, with a checked summary at the end. Installs redis-server first
# when it is missing. It ends after the checks (`--exit`; without it a terminal keeps the viz
# and the MCP server until Ctrl-C). Extra arguments go to `tatbot-state demo` (try --fast,
# --chaos or --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --quiet -p tatbot-state-cli --bin tatbot-state -- demo --exit "$@"

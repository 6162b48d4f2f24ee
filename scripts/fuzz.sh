#!/usr/bin/env bash
# Fuzzes the document and event decoders, then the replay reader, each for a bounded time (default 60 s) with cargo-fuzz
# (libFuzzer). cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. Installs cargo-fuzz from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time="$seconds" -max_len=4096
RUSTC_BOOTSTRAP=1 cargo fuzz run replay_reader -- -max_total_time="$seconds" -max_len=65536

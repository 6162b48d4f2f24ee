#!/usr/bin/env bash
# Runs the whole test suite against real redis-server processes that the tests start
# themselves (free loopback ports, temp dirs), and a headless Chromium for the dashboard test.
# Installs redis-server, chromium and python3-venv first when they are missing.
# Extra arguments go to the cargo test runner (for example a test name filter).
# Last, the Python package (crates/tatbot-state-py): a venv in the target dir gets maturin,
# pytest, pytest-timeout, pydantic and redis-py from pip when they are missing, the extension is built into it
# (debug profile, in the same target dir) and pytest runs its tests against real redis-servers.
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

target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
venv="$target_dir/py-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -x "$venv/bin/maturin" ] || ! "$venv/bin/python" -c "import pytest, pytest_timeout, pydantic, redis" >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check maturin pytest pytest-timeout "pydantic>=2,<3" redis
fi
# The wire tests run the CLI binary that cargo built for the CLI's own tests above.
export TATBOT_STATE_BIN="$target_dir/debug/tatbot-state"
(cd crates/tatbot-state-py && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --quiet)
"$venv/bin/python" -m pytest crates/tatbot-state-py/tests -q -p no:cacheprovider

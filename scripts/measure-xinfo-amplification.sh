#!/bin/bash
# How many bytes Redis sends in 10 s to one idle `tatbot-state viz` (one dashboard client)
# after another client appended a 5 MiB entry to the event log (docs/RELIABILITY.md, the
# hostile-data table). Loopback only: a private redis-server on a free port in a temp dir,
# stopped at the end. Needs redis-server, redis-cli and curl.
#
#   scripts/measure-xinfo-amplification.sh [path/to/tatbot-state]
set -euo pipefail
bin=${1:-target/release/tatbot-state}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
  kill "${curl_pid:-}" "${viz_pid:-}" 2>/dev/null || true
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir/pid" >/dev/null
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
head -c $((5 << 20)) /dev/zero | tr '\0' x | redis-cli -p "$port" -x XADD tatbot:events '*' payload >/dev/null
"$bin" viz -h 127.0.0.1 -p "$port" --bind 127.0.0.1:0 >"$dir/viz.log" 2>&1 &
viz_pid=$!
for _ in $(seq 100); do grep -qE "127.0.0.1:[0-9]+" "$dir/viz.log" && break; sleep 0.1; done
addr=$(grep -oE "127.0.0.1:[0-9]+" "$dir/viz.log" | head -1)
curl -sN --max-time 15 "http://$addr/api/stream" >/dev/null 2>&1 &
curl_pid=$!
sleep 2
sent() { redis-cli -p "$port" INFO stats | tr -d '\r' | sed -n 's/^total_net_output_bytes://p'; }
before=$(sent)
sleep 10
after=$(sent)
echo "$bin: Redis sent $(( (after - before) / 1048576 )) MiB in 10 s to one idle viz with one client"

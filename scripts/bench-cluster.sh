#!/usr/bin/env bash
# Fan-out of a 1,000-member group on N cluster nodes sharing one Redis (AOF, fsync per write).
# Redis and the nodes are pinned to core 0, the load tool to core 1.
#
#   scripts/bench-cluster.sh 1 one.json          # max rate (window 64)
#   RATE=100 scripts/bench-cluster.sh 3 three.json
#
# Needs `cargo build --release --workspace` (binaries in ${CARGO_TARGET_DIR:-target}/release).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release
N=${1:?usage: scripts/bench-cluster.sh NODES OUT.json}
OUT=${2:?usage: scripts/bench-cluster.sh NODES OUT.json}
REDIS_PORT=${REDIS_PORT:-16400}
BASE_PORT=${BASE_PORT:-18100}
D=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
  --appendonly yes --appendfsync always --save "" --dir "$D" >/dev/null 2>&1 &
PIDS+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
URLS=""
for i in $(seq "$N"); do
  KAIWA_LOG=warn taskset -c 0 "$T/kaiwa" serve --port $((BASE_PORT + i)) \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" --node-id "n$i" >"$D/n$i.log" 2>&1 &
  PIDS+=($!)
  URLS="$URLS,ws://127.0.0.1:$((BASE_PORT + i))"
done
for i in $(seq "$N"); do
  until curl -fs "http://127.0.0.1:$((BASE_PORT + i))/healthz" >/dev/null 2>&1; do sleep 0.1; done
done
sleep 1 # every node sees every other
taskset -c 1 "$T/kaiwa-loadtest" --url "${URLS#,}" --duration 10 --json "$OUT" \
  fanout -n 1000 -p 1 ${RATE:+--rate "$RATE"}

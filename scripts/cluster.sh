#!/usr/bin/env bash
# Kaiwa cluster on loopback: one redis-server (AOF on, fsync per write) and N nodes.
#
#   scripts/cluster.sh 3        # Redis on $REDIS_PORT (6390), nodes n1..n3 on $BASE_PORT+1.. (8081..)
#   scripts/cluster.sh stop     # stops everything this script started, by pid
#
# State (Redis AOF, pid files, logs) lives in $CLUSTER_DIR (./.cluster). The node binary is
# $KAIWA_BIN, built with `cargo build --release` when not given.
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_DIR=${CLUSTER_DIR:-.cluster}
REDIS_PORT=${REDIS_PORT:-6390}
BASE_PORT=${BASE_PORT:-8080}

stop() {
  [ -d "$CLUSTER_DIR/pids" ] || return 0
  for f in "$CLUSTER_DIR"/pids/*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    if kill "$pid" 2>/dev/null; then
      echo "stopped $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
  done
}

if [ "${1:-}" = "stop" ]; then
  stop
  exit 0
fi

N=${1:?usage: scripts/cluster.sh N | stop}
if [ -z "${KAIWA_BIN:-}" ]; then
  cargo build --release --quiet
  KAIWA_BIN=${CARGO_TARGET_DIR:-target}/release/kaiwa
fi

mkdir -p "$CLUSTER_DIR/pids" "$CLUSTER_DIR/redis" "$CLUSTER_DIR/logs"
stop

# Acked => durable: every write is in the AOF and fsynced before Redis replies.
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
  --appendonly yes --appendfsync always --save "" \
  --dir "$(cd "$CLUSTER_DIR/redis" && pwd)" \
  >"$CLUSTER_DIR/logs/redis.log" 2>&1 &
echo $! >"$CLUSTER_DIR/pids/redis.pid"
for _ in $(seq 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
echo "redis on 127.0.0.1:$REDIS_PORT (pid $(cat "$CLUSTER_DIR/pids/redis.pid"))"

for i in $(seq "$N"); do
  port=$((BASE_PORT + i))
  KAIWA_LOG=${KAIWA_LOG:-info} "$KAIWA_BIN" serve \
    --port "$port" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT" \
    --node-id "n$i" \
    >"$CLUSTER_DIR/logs/n$i.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/pids/n$i.pid"
done
for i in $(seq "$N"); do
  port=$((BASE_PORT + i))
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "node n$i on ws://127.0.0.1:$port/ws (pid $(cat "$CLUSTER_DIR/pids/n$i.pid"))"
done

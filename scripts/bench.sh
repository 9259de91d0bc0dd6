#!/usr/bin/env bash
# Kaiwa's standard benchmark suite: each scenario of kaiwa-loadtest against a fresh release node
# (node pinned to core 0, the tool to core 1, loopback only, every run bounded in time), each run
# repeated and the median reported. Writes BENCHMARKS.md (figures, targets, exact commands, date,
# machine) and keeps every run's JSON report under bench-results/.
#
#   scripts/bench.sh [--repeat N] [--quick] [--only NAME] [--cluster]
#
# --quick: shorter runs and smaller groups, for trying the script. --only NAME: one scenario
# (fanout_max, fanout_1k_100, fanout_stalled, fanout_max_stalled, fanout_10k_10, floor_1k_100,
# floor_10k_10, floor_10k_10_shuffled, chat_max,
# chat_half, chat_half_own, connect, churn, tree). --cluster: the same suite against a 3-node cluster (see below).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=3
QUICK=0
ONLY=""
CLUSTER=0
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --cluster) CLUSTER=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
KAIWA="$TARGET_DIR/release/kaiwa"
TOOL="$TARGET_DIR/release/kaiwa-loadtest"
OUT=bench-results
mkdir -p "$OUT"
ADMIN_KEY="bench-admin-key"
SECRET="bench-token-secret-0123456789abcdef"
PORT=${KAIWA_BENCH_PORT:-18080}

echo "building release ..." >&2
cargo build --release --workspace >&2

if [ "$CLUSTER" = 1 ]; then
  # One node vs three nodes on one Redis, 1,000-member group, max rate and 100 msgs/s, each pair
  # back to back (scripts/bench-cluster.sh starts Redis with AOF and the nodes on core 0). The
  # table replaces the one between the cluster markers of BENCHMARKS.md.
  command -v redis-server >/dev/null || { echo "--cluster needs redis-server" >&2; exit 3; }
  OUT=bench-results/cluster-$(date -u +%Y%m%dT%H%M%S)
  mkdir -p "$OUT"
  TABLE="| date | load | nodes | deliveries/s | send→deliver p99 ms | send→ack p99 ms | lost |
|---|---|---|---|---|---|---|"
  for rate in "" 100; do
    for n in 1 3; do
      f="$OUT/n$n-r${rate:-max}.json"
      RATE=$rate scripts/bench-cluster.sh "$n" "$f" >"$f.txt" 2>&1 || { echo "cluster run failed: $f.txt" >&2; exit 1; }
      load="max rate (window 64)"
      if [ -n "$rate" ]; then load="$rate msgs/s"; fi
      TABLE="$TABLE
| $(date -u +%Y-%m-%d) | $load | $n | $(jq -r '.deliveries_per_s | floor' "$f") | $(jq -r '.delivery_latency.p99_ms' "$f") | $(jq -r '.ack_latency.p99_ms' "$f") | $(jq -r '.loss.lost' "$f") |"
    done
  done
  echo "$TABLE"
  BEGIN='<!-- cluster figures: begin -->'
  END='<!-- cluster figures: end -->'
  if grep -qF "$BEGIN" BENCHMARKS.md; then
    awk -v b="$BEGIN" -v e="$END" -v t="$TABLE" '
      $0 == b { print; print t; skip = 1; next }
      $0 == e { skip = 0 }
      !skip { print }' BENCHMARKS.md >BENCHMARKS.md.new && mv BENCHMARKS.md.new BENCHMARKS.md
    echo "updated the cluster table of BENCHMARKS.md" >&2
  fi
  exit 0
fi

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

NODE_PID=""
DATA_DIR=""
stop_node() {
  if [ -n "$NODE_PID" ]; then
    kill "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=""
  fi
  if [ -n "$DATA_DIR" ]; then rm -rf "$DATA_DIR"; DATA_DIR=""; fi
}
trap stop_node EXIT

start_node() {
  PORT=$((PORT + 1))
  DATA_DIR=$(mktemp -d)
  KAIWA_LOG=warn taskset -c 0 "$KAIWA" serve --port "$PORT" --data-dir "$DATA_DIR" \
    --admin-key "$ADMIN_KEY" --token-secret "$SECRET" >"$OUT/node-$PORT.log" 2>&1 &
  NODE_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "node did not come up" >&2
  exit 1
}

# The command as BENCHMARKS.md shows it (node start + tool invocation).
NODE_CMD='taskset -c 0 kaiwa serve --port P --data-dir $(mktemp -d) --admin-key K --token-secret S'
tool_cmd() { echo "taskset -c 1 kaiwa-loadtest --url ws://127.0.0.1:P --admin-key K $*"; }

# run NAME ARGS... : one fresh node per run, REPEAT runs; JSON in $OUT/NAME.RUN.json.
run() {
  local name="$1"; shift
  for i in $(seq "$REPEAT"); do
    run_one "$name" "$i" "$@"
  done
}

# run_one NAME I ARGS... : run I of NAME on a fresh node; JSON in $OUT/NAME.I.json.
run_one() {
  local name="$1" i="$2"; shift 2
  start_node
  echo "[$name run $i/$REPEAT] kaiwa-loadtest $*" >&2
  if ! timeout 900 taskset -c 1 "$TOOL" --url "ws://127.0.0.1:$PORT" --admin-key "$ADMIN_KEY" \
      --json "$OUT/$name.$i.json" "$@" >"$OUT/$name.$i.txt" 2>&1; then
    echo "  run failed: $(tail -3 "$OUT/$name.$i.txt" | tr '\n' ' ')" >&2
    rm -f "$OUT/$name.$i.json"
  fi
  stop_node
}

# run_floor NAME ARGS... : the loopback floor (no node), REPEAT runs; the tool's writer on the
# node's core (0) and its reader process on the tool's core (1).
run_floor() {
  local name="$1"; shift
  for i in $(seq "$REPEAT"); do
    echo "[$name run $i/$REPEAT] kaiwa-loadtest $*" >&2
    if ! timeout 300 taskset -c 1 "$TOOL" --json "$OUT/$name.$i.json" "$@" >"$OUT/$name.$i.txt" 2>&1; then
      echo "  run failed: $(tail -3 "$OUT/$name.$i.txt" | tr '\n' ' ')" >&2
      rm -f "$OUT/$name.$i.json"
    fi
  done
}

# values NAME JQ-EXPR : the figure of every run, sorted.
values() {
  for f in "$OUT/$1".*.json; do [ -f "$f" ] && jq -r "$2 // empty" "$f"; done | sort -g
}

# num X : a figure rounded for reading (3 significant digits below 100, else whole).
num() {
  awk -v x="$1" 'BEGIN { if (x < 100) printf "%.3g", x; else printf "%.0f", x }'
}

# median NAME JQ-EXPR : median (and min..max) of a figure over the runs.
median() {
  local vals
  vals=$(values "$1" "$2")
  if [ -z "$vals" ]; then echo "n/a"; return; fi
  local n; n=$(echo "$vals" | wc -l)
  local med; med=$(echo "$vals" | sed -n "$(( (n + 1) / 2 ))p")
  echo "$(num "$med") ($(num "$(echo "$vals" | head -1)")..$(num "$(echo "$vals" | tail -1)"), n=$n)"
}
median_raw() {
  local vals; vals=$(values "$1" "$2")
  [ -z "$vals" ] && return 0
  local n; n=$(echo "$vals" | wc -l)
  echo "$vals" | sed -n "$(( (n + 1) / 2 ))p"
}
lost() {
  local s=0
  for f in "$OUT/$1".*.json; do [ -f "$f" ] && s=$((s + $(jq -r '.loss.lost' "$f"))); done
  echo "$s"
}

# "; node N%, tool T% of a core": the medians of what each used during the traffic, so that a
# latency row says which side was the busier (a saturated tool reports its own queueing).
cpu() {
  local n t
  n=$(median_raw "$1" .extra.nodes_cpu_busy); t=$(median_raw "$1" .extra.tool_cpu_busy)
  [ -z "$n$t" ] && return 0
  awk -v n="${n:-0}" -v t="${t:-0}" 'BEGIN { printf "; node %.0f%%, tool %.0f%% of a core", n * 100, t * 100 }'
}

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# Latency rows leave the first 2 s of traffic out of their histograms (the tool starts
# thousands of publisher tasks; they still count for throughput and loss).
W="--warmup 2"
if [ "$QUICK" = 1 ]; then W="--warmup 1"; D=3; BIG=2000; CONN=3000; PAIRS=500; else D=10; BIG=10000; CONN=19000; PAIRS=5000; fi
rm -f "$OUT"/*.json "$OUT"/*.txt

declare -A CMD
if want fanout_max; then CMD[fanout_max]="--duration $D fanout -n 1000"; run fanout_max ${CMD[fanout_max]}; fi
# With and without a stalled reader, interleaved so that the machine's noise hits both alike.
if want fanout_1k_100 || want fanout_stalled; then
  CMD[fanout_1k_100]="--duration $D $W fanout -n 1000 --rate 100"
  CMD[fanout_stalled]="--duration $D $W fanout -n 1000 --rate 100 --stalled 1"
  for i in $(seq "$REPEAT"); do
    run_one fanout_1k_100 "$i" ${CMD[fanout_1k_100]}
    run_one fanout_stalled "$i" ${CMD[fanout_stalled]}
  done
fi
if want fanout_max_stalled; then CMD[fanout_max_stalled]="--duration $D fanout -n 1000 --stalled 1"; run fanout_max_stalled ${CMD[fanout_max_stalled]}; fi
if want fanout_10k_10; then CMD[fanout_10k_10]="--duration $D $W fanout -n $BIG --rate 10"; run fanout_10k_10 ${CMD[fanout_10k_10]}; fi
# What the kernel alone charges for the same writes: the floor of the two latency rows above.
FLOOR_PIN="--send-cpu 0 --recv-cpu 1"
if want floor_1k_100; then CMD[floor_1k_100]="--duration $D $W floor -n 1000 --rate 100 $FLOOR_PIN"; run_floor floor_1k_100 ${CMD[floor_1k_100]}; fi
if want floor_10k_10; then CMD[floor_10k_10]="--duration $D $W floor -n $BIG --rate 10 $FLOOR_PIN"; run_floor floor_10k_10 ${CMD[floor_10k_10]}; fi
# The same writes in random order: what a fan-out in member-list order (random user ids) costs.
if want floor_10k_10_shuffled; then CMD[floor_10k_10_shuffled]="--duration $D $W floor -n $BIG --rate 10 $FLOOR_PIN --shuffle"; run_floor floor_10k_10_shuffled ${CMD[floor_10k_10_shuffled]}; fi
if want chat_max; then CMD[chat_max]="--duration $D chat -k $PAIRS"; run chat_max ${CMD[chat_max]}; fi
CHAT_HALF_RATE=25000
if want chat_half; then CMD[chat_half]="--duration $D $W chat -k $PAIRS --rate $CHAT_HALF_RATE"; run chat_half ${CMD[chat_half]}; fi
# Half of the rate this node actually reached, for the latency at half load.
OWN_MAX=$(median_raw chat_max .acks_per_s)
if want chat_half_own && [ -n "$OWN_MAX" ]; then
  CHAT_OWN_RATE=$(awk -v x="$OWN_MAX" 'BEGIN { printf "%d", x / 2000 * 1000 }')
  CMD[chat_half_own]="--duration $D $W chat -k $PAIRS --rate $CHAT_OWN_RATE"
  run chat_half_own ${CMD[chat_half_own]}
fi
# Connections are paced by the tool (batches of 500, 5 ms apart): with the tool's default
# pacing (200 per 20 ms) the pacing, not the server, sets the handshake rate.
if want connect; then CMD[connect]="--duration 5 --batch 500 --batch-pause-ms 5 connect -n $CONN"; run connect ${CMD[connect]}; fi
if want churn; then CMD[churn]="--duration $D $W churn"; run churn ${CMD[churn]}; fi
TREE_NOTE=""
if want tree; then
  CMD[tree]="--duration $D tree --depth 3 --branching 10 --members 10"
  run tree ${CMD[tree]}
  if grep -qs "not supported\|parent" "$OUT"/tree.1.txt && [ ! -f "$OUT/tree.1.json" ]; then
    TREE_NOTE="skipped: this server refuses \`parent\` (hierarchical groups are not available yet)"
  fi
fi

# ---- BENCHMARKS.md ----
# Everything below the notes marker of the current BENCHMARKS.md (the analysis) is kept.
MARKER='<!-- notes: written by hand, kept by scripts/bench.sh -->'
NOTES=""
if [ -f BENCHMARKS.md ] && grep -qF "$MARKER" BENCHMARKS.md; then
  NOTES=$(awk -v m="$MARKER" 'f { print } $0 == m { f = 1 }' BENCHMARKS.md)
fi
CORES=$(nproc --all)
MEM=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
CPU=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
row() { # scenario target measured cmd-key
  local c="${CMD[$4]:-}"
  [ -z "$c" ] && return 0
  local shown; shown=$(tool_cmd "$c")
  case "$4" in floor_*) shown="taskset -c 1 kaiwa-loadtest $c" ;; esac
  echo "| $1 | $2 | $3 | \`$shown\` |"
}
# "; write W µs, read R µs of CPU per record": a floor run's costs on each side.
floor_cpu() {
  echo "; write $(num "$(median_raw "$1" .extra.write_cpu_us)") µs, read $(num "$(median_raw "$1" .extra.read_cpu_us)") µs of CPU per record"
}
{
  echo "# Kaiwa benchmarks"
  echo
  echo "Written by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d) (UTC), commit $COMMIT."
  echo "Machine: $CORES cores ($CPU), $MEM memory, open files per process limited to $(ulimit -Hn)."
  echo "Setup: release build; every run on a fresh node started as \`$NODE_CMD\`;"
  echo "the tool pinned to the other core; 100-byte text messages in JSON; durable acks on"
  echo "(each send is acked once durable: after the fdatasync of its journal append). Each figure is the median of $REPEAT runs,"
  echo "with the range and number of runs in brackets. Lost = acked messages neither delivered"
  echo "live nor recovered by sync, summed over all runs (must be 0). Latency rows run with"
  echo "\`$W\`: the first seconds of traffic count for throughput and loss but not for latency."
  echo "Node and tool CPU: the share of one core each used during the traffic (medians; the node's"
  echo "from its \`/metrics\`, the tool's from its own process), to tell which side limited a row."
  echo
  echo "| scenario | target | measured (median (min..max, runs)) | command |"
  echo "|---|---|---|---|"
  row "fanout 1,000 members, max rate: deliveries/s" "≥ 1,000,000" "$(median fanout_max .deliveries_per_s); lost $(lost fanout_max)$(cpu fanout_max)" fanout_max
  row "fanout 1,000 members at 100 msgs/s: p99 send→deliver ms" "≤ 5" "$(median fanout_1k_100 .delivery_latency.p99_ms); lost $(lost fanout_1k_100)$(cpu fanout_1k_100)" fanout_1k_100
  row "fanout $BIG members at 10 msgs/s: p99 send→deliver ms" "≤ 50" "$(median fanout_10k_10 .delivery_latency.p99_ms); lost $(lost fanout_10k_10)$(cpu fanout_10k_10)" fanout_10k_10
  row "floor of the two rows above, no server: 1,000 sockets written 100 times/s from core 0, read on core 1: p99 write→read ms" "—" "$(median floor_1k_100 .delivery_latency.p99_ms)$(floor_cpu floor_1k_100)" floor_1k_100
  row "floor, no server: $BIG sockets written 10 times/s in accept order: p99 write→read ms" "—" "$(median floor_10k_10 .delivery_latency.p99_ms)$(floor_cpu floor_10k_10)" floor_10k_10
  row "floor, no server: the same in random order: p99 write→read ms" "—" "$(median floor_10k_10_shuffled .delivery_latency.p99_ms)$(floor_cpu floor_10k_10_shuffled)" floor_10k_10_shuffled
  row "fanout 1,000 at 100 msgs/s + 1 stalled reader: p99 ms of the others (runs interleaved with the row above)" "within 10% of the run without" "$(median fanout_stalled .delivery_latency.p99_ms); lost $(lost fanout_stalled)$(cpu fanout_stalled)" fanout_stalled
  row "fanout 1,000 at max rate + 1 stalled reader: deliveries/s to the others" "within 10% of the run without" "$(median fanout_max_stalled .deliveries_per_s); lost $(lost fanout_max_stalled)$(cpu fanout_max_stalled)" fanout_max_stalled
  row "chat $PAIRS pairs, max rate: acked msgs/s" "≥ 50,000" "$(median chat_max .acks_per_s); lost $(lost chat_max)$(cpu chat_max)" chat_max
  row "chat $PAIRS pairs at $CHAT_HALF_RATE msgs/s: p99 ack ms (acked msgs/s reached: $(median chat_half .acks_per_s))" "≤ 20" "$(median chat_half .ack_latency.p99_ms); lost $(lost chat_half)$(cpu chat_half)" chat_half
  row "chat $PAIRS pairs at ${CHAT_OWN_RATE:-?} msgs/s (half the measured max): p99 ack ms" "—" "$(median chat_half_own .ack_latency.p99_ms); lost $(lost chat_half_own)$(cpu chat_half_own)" chat_half_own
  row "connect $CONN idle connections: server RSS growth per connection, bytes" "≤ 4096" "$(median connect .extra.rss_per_connection_bytes)" connect
  row "connect $CONN: handshakes/s" "≥ 5,000" "$(median connect .connect.handshakes_per_s)" connect
  row "churn (200 members, 500 churners, 50 connects/s, 50 msgs/s): p99 send→deliver ms" "—" "$(median churn .delivery_latency.p99_ms); lost $(lost churn)$(cpu churn)" churn
  if [ -n "${CMD[tree]:-}" ]; then
    if [ -n "$TREE_NOTE" ]; then
      echo "| tree (1 + 10 + 100 groups, 10 members each) | — | $TREE_NOTE | \`$(tool_cmd "${CMD[tree]}")\` |"
    else
      row "tree (1 + 10 + 100 groups, 10 members each): ms until the last member has it" "—" "$(median tree .extra.time_to_last_member_ms)" tree
    fi
  fi
  echo
  echo "Node: \`$NODE_CMD\` (P, K, S: a free port, an admin key, a token secret)."
  echo "Full JSON reports of every run: \`bench-results/\` (not committed)."
  echo
  echo "$MARKER"
  if [ -n "$NOTES" ]; then echo "$NOTES"; fi
} > BENCHMARKS.md.new
mv BENCHMARKS.md.new BENCHMARKS.md
echo "wrote BENCHMARKS.md" >&2

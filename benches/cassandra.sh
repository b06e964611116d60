#!/usr/bin/env bash
# Start time, memory and stop time of one Apache Cassandra 5.0 node run by texu-cassandra --fast
# (the test-node settings), each run in a network namespace of its own (so ports collide with
# nothing) with a fresh data directory. Per run it prints:
#   first start -> Ready (texu-cassandra-ready passes: CQL answers and nodetool shows UN),
#   RSS once Ready, stop (SIGTERM, Cassandra drains), restart on the same data -> Ready,
# then the median of each. Needs root, unshare/nsenter (util-linux), and scripts/setup.sh's
# Cassandra install.
#
# Usage: sudo benches/cassandra.sh [RUNS] [HEAP]     (default 3 runs, 512M heap)
set -euo pipefail
runs=${1:-3}
heap=${2:-512M}
repo=$(dirname "$(readlink -f "$0")")/..
launcher=$repo/scripts/cassandra/texu-cassandra
ready=$repo/scripts/cassandra/texu-cassandra-ready
[ "$(id -u)" -eq 0 ] || { echo "cassandra bench: needs root (network namespaces)" >&2; exit 1; }
work=$(mktemp -d /tmp/texu-cassandra-bench.XXXXXX)
holder=""
cleanup() {
  [ -n "$holder" ] && kill -KILL "$holder" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# Starts a node on DATA_DIR in a new network namespace; sets $holder (unshare's pid).
start() {
  unshare --net --fork --kill-child=SIGKILL -- bash -c \
    "ip link set lo up && exec $launcher run --fast --heap $heap --data-dir $1 --die-with-parent" \
    > "$1.log" 2>&1 &
  holder=$!
}

# Waits until the node of DATA_DIR is Ready; at most 300 s.
wait_ready() {
  local t0=$1 pid
  while :; do
    kill -0 "$holder" 2>/dev/null || { echo "node exited:" >&2; tail -n 20 "$2.log" >&2; exit 1; }
    pid=$(cat "$2/cassandra.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && nsenter --net="/proc/$pid/ns/net" "$ready" >/dev/null 2>&1; then return; fi
    [ "$(echo "$(now) - $t0 < 300" | bc)" = 1 ] || { echo "not Ready in 300 s" >&2; exit 1; }
    sleep 0.25
  done
}

stop() {
  "$launcher" stop --data-dir "$1" --timeout 60 >/dev/null
  wait "$holder" 2>/dev/null || true
  holder=""
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

echo "texu-cassandra --fast --heap $heap, $(nproc) CPUs, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-4s %12s %10s %9s %12s\n' run "first start" "RSS MiB" "stop" "restart"
: > "$work/first"; : > "$work/rss"; : > "$work/stop"; : > "$work/restart"
for ((i = 1; i <= runs; i++)); do
  d=$work/node$i
  t0=$(now); start "$d"; wait_ready "$t0" "$d"; first=$(since "$t0")
  rss=$(awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$(cat "$d/cassandra.pid")/status")
  t0=$(now); stop "$d"; stopped=$(since "$t0")
  t0=$(now); start "$d"; wait_ready "$t0" "$d"; again=$(since "$t0")
  stop "$d"
  printf '%-4s %11.1fs %10s %8.1fs %11.1fs\n' "$i" "$first" "$rss" "$stopped" "$again"
  echo "$first" >> "$work/first"; echo "$rss" >> "$work/rss"
  echo "$stopped" >> "$work/stop"; echo "$again" >> "$work/restart"
done
printf '%-4s %11.1fs %10s %8.1fs %11.1fs\n' median "$(median < "$work/first")" \
  "$(median < "$work/rss")" "$(median < "$work/stop")" "$(median < "$work/restart")"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

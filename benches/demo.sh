#!/usr/bin/env bash
# `texu demo` as the README runs it (the default Rastru stack on three boards: 2 Apache proxies,
# 3 exchange replicas, a 3-member Cassandra ring), ROUNDS times: per round, when the boards were
# up, when each Cassandra member was Ready (members join one at a time), when the whole stack
# was ("texu demo: ready in"), and how long Ctrl-C (SIGINT) took to remove everything; then the
# medians and the load average.
#
# Usage: sudo benches/demo.sh [ROUNDS]        (default 3)
#   TEXU=PATH picks the texu binary (default: target/debug/texu, built here; the time is the
#   JVMs', not texu's). /usr/local/bin/texu-exchange is installed from the same build, as
#   scripts/demo.sh does. DEMO_ARGS adds arguments to `texu demo` (e.g. "-f DIR" for other
#   manifests). Needs no running demo (`texu demo down` stops one).
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$(readlink -f "$0")")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo bench: needs root (LXC, network namespaces)" >&2; exit 1; }
if [ -z "${TEXU:-}" ]; then
  cargo build --quiet -p texu --bin texu
  cargo build --quiet -p texu-exchange
  TEXU=target/debug/texu
  install -m 0755 target/debug/texu-exchange /usr/local/bin/.texu-exchange.new
  mv /usr/local/bin/.texu-exchange.new /usr/local/bin/texu-exchange
fi
log=$(mktemp /tmp/texu-demo-bench.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 1800); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    "$TEXU" demo down >/dev/null 2>&1 || true
  fi
  rm -f "$log"
}
trap cleanup EXIT
# The seconds of the first progress line saying `cassandra K/3 Ready`.
member_at() { grep -m1 "; cassandra $1/3 Ready" "$log" | sed 's/.*(\([0-9]*\)s).*/\1/'; }
boards=() m1=() m2=() m3=() ready=() stops=()
echo "texu demo bench, $rounds rounds, $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
  : >"$log"
  # shellcheck disable=SC2086
  "$TEXU" demo ${DEMO_ARGS:-} </dev/null >"$log" 2>&1 &
  pid=$!
  # Bounded: the demo itself gives up after 7 minutes of applying.
  for _ in $(seq 1 6000); do
    grep -q 'texu demo: running' "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "round $r: texu demo exited" >&2; exit 1; }
    sleep 0.1
  done
  grep -q 'texu demo: running' "$log" || { cat "$log"; echo "round $r: not ready in 10 min" >&2; exit 1; }
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  b=$(sed -n 's/.*boards\? ready in \([0-9.]*\)s.*/\1/p' "$log" | head -1)
  t=$(sed -n 's/^texu demo: ready in \([0-9.]*\)s/\1/p' "$log")
  a1=$(member_at 1) a2=$(member_at 2) a3=$(member_at 3)
  start=$(date +%s.%N)
  kill -INT "$pid"
  for _ in $(seq 1 1800); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { cat "$log"; echo "round $r: still running 3 min after SIGINT" >&2; exit 1; }
  wait "$pid" || { cat "$log"; echo "round $r: texu demo failed" >&2; exit 1; }
  pid=
  s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
  grep -q 'texu demo: stopped' "$log" || { cat "$log"; echo "round $r: no 'stopped' line" >&2; exit 1; }
  printf 'round %s: boards up %ss; cassandra members Ready at %ss, %ss, %ss; stack ready in %ss; stopped %.1fs after SIGINT (load %s)\n' \
    "$r" "$b" "$a1" "$a2" "$a3" "$t" "$s" "$load"
  boards+=("$b") m1+=("$a1") m2+=("$a2") m3+=("$a3") ready+=("$t") stops+=("$s")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf 'median over %s rounds: boards up %ss; members Ready at %ss, %ss, %ss; stack ready in %ss; stopped in %.1fs\n' \
  "$rounds" "$(median "${boards[@]}")" "$(median "${m1[@]}")" "$(median "${m2[@]}")" \
  "$(median "${m3[@]}")" "$(median "${ready[@]}")" "$(median "${stops[@]}")"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

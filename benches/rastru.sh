#!/usr/bin/env bash
# The demo's Rastru stack (manifests/demo/rastru/: 2 Apache proxies, 3 exchange replicas, 3
# Cassandra members) on the board harness, ROUNDS times, through tests/rastru.rs: prints, per
# round, when the ring was Ready (members one at a time), when the whole stack was, and how
# long the fourth member's decommission through preStop took, then the medians.
#
# Usage: sudo benches/rastru.sh [ROUNDS]        (default 3; each round is one test run)
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$(readlink -f "$0")")/.."
[ "$(id -u)" -eq 0 ] || { echo "rastru bench: needs root (LXC, network namespaces)" >&2; exit 1; }
cargo build --quiet -p texu-exchange
install -m 0755 target/debug/texu-exchange /usr/local/bin/.texu-exchange.new
mv /usr/local/bin/.texu-exchange.new /usr/local/bin/texu-exchange
ring=() all=() gone=()
for r in $(seq 1 "$rounds"); do
  log=$(mktemp /tmp/texu-rastru-bench.XXXXXX)
  cargo test --quiet --test rastru -- --nocapture >"$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
  line=$(grep 'rastru stack: ring Ready after' "$log")
  r1=$(sed 's/.*ring Ready after \([0-9.]*\)s.*/\1/' <<<"$line")
  r2=$(sed 's/.*everything after \([0-9.]*\)s.*/\1/' <<<"$line")
  r3=$(grep 'decommissioned and removed in' "$log" | sed 's/.* in \([0-9.]*\)s.*/\1/')
  rm -f "$log"
  echo "round $r: ring Ready ${r1}s, stack Ready ${r2}s, 4th member decommissioned and removed ${r3}s"
  ring+=("$r1") all+=("$r2") gone+=("$r3")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "median over $rounds rounds: ring Ready $(median "${ring[@]}")s, stack Ready $(median "${all[@]}")s, decommission $(median "${gone[@]}")s"

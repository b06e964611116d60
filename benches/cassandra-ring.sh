#!/usr/bin/env bash
# A Cassandra 5.0 ring of MEMBERS nodes formed the way Texu's rules say (member N+1 starts only
# when members 0..N are Ready; seeds are the Ready members; the first seeds itself), then the
# last member SIGKILLed and replaced by a new node at a new address with
# replace_address_first_boot. All nodes run texu-cassandra --fast in one network namespace of
# their own, at 127.0.0.1, 127.0.0.2, ... (default ports; JMX ports 7199, 7299, ...). Prints the
# time each member took to Ready, the whole ring's, the replacement's, and the final
# `nodetool status` (all UN expected, the replaced address gone).
#
# Usage: sudo benches/cassandra-ring.sh [MEMBERS] [HEAP]      (default 3 members, 512M)
set -euo pipefail
members=${1:-3}
heap=${2:-512M}
repo=$(dirname "$(readlink -f "$0")")/..
launcher=$repo/scripts/cassandra/texu-cassandra
ready=$repo/scripts/cassandra/texu-cassandra-ready
nodetool=$repo/scripts/cassandra/texu-nodetool
[ "$(id -u)" -eq 0 ] || { echo "cassandra ring bench: needs root (a network namespace)" >&2; exit 1; }
work=$(mktemp -d /tmp/texu-cassandra-ring.XXXXXX)
# The namespace lives as long as this holder; every node dies with it (--kill-child, and each
# launcher's --die-with-parent on the nsenter that started it).
unshare --net --fork --kill-child=SIGKILL -- sleep 3600 &
holder=$!
cleanup() {
  exec 2>/dev/null   # no "Killed" notice for the holder
  kill -KILL "$holder" || true
  for p in "$work"/*/cassandra.pid; do
    [ -f "$p" ] && kill -KILL "$(cat "$p")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
sleep 0.2
ns_pid=$(pgrep -P "$holder" sleep)
inns() { nsenter --net="/proc/$ns_pid/ns/net" "$@"; }
inns ip link set lo up

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

# start INDEX SEEDS [EXTRA...]: node INDEX at 127.0.0.(INDEX+1), JMX 7199 + 100 * INDEX.
start() {
  local i=$1 seeds=$2; shift 2
  inns "$launcher" run --fast --heap "$heap" --data-dir "$work/n$i" --listen "127.0.0.$((i + 1))" \
    --jmx-port $((7199 + 100 * i)) --seeds "$seeds" --cluster-name ring --die-with-parent "$@" \
    > "$work/n$i.log" 2>&1 &
}

# wait_ready INDEX START_TIME: at most 300 s.
wait_ready() {
  local i=$1 t0=$2
  until inns "$ready" --address "127.0.0.$((i + 1))" --jmx-port $((7199 + 100 * i)) 2>/dev/null; do
    if [ "$(echo "$(now) - $t0 > 300" | bc)" = 1 ]; then
      echo "member $i not Ready in 300 s:" >&2; tail -n 20 "$work/n$i.log" >&2; exit 1
    fi
    sleep 0.25
  done
}

echo "texu-cassandra --fast --heap $heap, $members members, $(nproc) CPUs, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
ring0=$(now)
seeds=""
for ((i = 0; i < members; i++)); do
  t0=$(now)
  start "$i" "${seeds:-127.0.0.$((i + 1))}"
  wait_ready "$i" "$t0"
  printf 'member %d (127.0.0.%d) Ready in %.1fs\n' "$i" $((i + 1)) "$(since "$t0")"
  seeds=${seeds:+$seeds,}127.0.0.$((i + 1))
done
printf 'ring of %d Ready in %.1fs\n' "$members" "$(since "$ring0")"

last=$((members - 1))
kill -KILL "$(cat "$work/n$last/cassandra.pid")"
# The survivors see it down before the replacement may take its place.
until inns "$nodetool" -p 7199 status 2>/dev/null | grep -q "^DN  127.0.0.$((last + 1)) "; do sleep 0.5; done
new=$members
t0=$(now)
start "$new" "$(echo "$seeds" | sed "s/,127.0.0.$((last + 1))\$//")" --replace-address "127.0.0.$((last + 1))"
wait_ready "$new" "$t0"
printf 'replacement (127.0.0.%d for 127.0.0.%d) Ready in %.1fs\n' $((new + 1)) $((last + 1)) "$(since "$t0")"
# Gossip keeps the replaced address a while; the ring is whole when every listed node is UN.
inns "$nodetool" -p 7199 status | grep -E '^(UN|DN|UJ|UL|UM|DL|DJ)'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

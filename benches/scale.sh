#!/usr/bin/env bash
# Scale benchmark (issue 15; targets in DESIGN.md section 10): one real controller (embedded
# store) and `texu sim` boards heartbeating every 500 ms from one process, each container
# reported Ready at once (no LXC). For each size BOARDSxPER_BOARD it prints:
#   1. the controller's resident memory (VmRSS, VmHWM) and CPU share (of one core) over a
#      steady window of MEASURE seconds once every container is Ready;
#   2. the heartbeat round trip p50/p99 seen by the boards in that window;
#   3. the bytes the controller wrote to disk in that window (/proc/PID/io write_bytes; the
#      window is idle: heartbeats only, nothing changes);
#   4. POWER_OFF % of the boards powered off at once: the time until all their containers are
#      Ready on other boards (reported by their boards and accepted by the controller), and
#      how many boards that kept power were marked NotReady (must be 0).
#
#   benches/scale.sh                         # SIZES="100x10 1000x10", MEASURE=60
#   MEASURE=600 SIZES=100x10 benches/scale.sh  # the issue's idle 10 minutes at 100 boards
#
# Needs jq and cargo; no root (nothing but the controller and the simulation run, on
# 127.0.0.1). Settings (environment): SIZES ("100x10 1000x10"), MEASURE (60 s), WARM (10 s from
# all Ready to the window), POWER_OFF (10 %), READY_TIMEOUT (300 s), TEXU_BENCH_WORK
# (/tmp/texu-bench-scale), TEXU_BIN (a texu binary to use instead of building the release one),
# SIM_BIN (the binary that runs `texu sim`, default the same). Removes what it started on exit, Ctrl-C or TERM.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${TEXU_BENCH_WORK:-/tmp/texu-bench-scale}
SIZES=${SIZES:-100x10 1000x10}
MEASURE=${MEASURE:-60}
WARM=${WARM:-10}
POWER_OFF=${POWER_OFF:-10}
READY_TIMEOUT=${READY_TIMEOUT:-300}
REPORT_EVERY=10

say() { printf '[scale.sh] %s\n' "$*" >&2; }
die() {
	say "FAILED: $*"
	exit 1
}

case "$WORK" in
/ | "" | /tmp | /tmp/) die "TEXU_BENCH_WORK=$WORK is not a scratch directory" ;;
/*) ;;
*) die "TEXU_BENCH_WORK must be an absolute path" ;;
esac
for tool in jq cargo awk; do
	command -v "$tool" >/dev/null || die "$tool is not installed"
done
((MEASURE >= 2 * REPORT_EVERY)) || die "MEASURE must be at least $((2 * REPORT_EVERY)) s"

CONTROLLER_PID=
SIM_PID=
EVENTS_PID=
stop_pid() {
	local pid=$1
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	stop_pid "$EVENTS_PID"
	stop_pid "$SIM_PID"
	stop_pid "$CONTROLLER_PID"
	EVENTS_PID= SIM_PID= CONTROLLER_PID=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${TEXU_BIN:-} ]]; then
	TEXU=$TEXU_BIN
else
	say "building (cargo build --release --locked --bin texu)"
	(cd "$ROOT" && cargo build --release --locked --bin texu)
	TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
	TEXU=$TARGET_DIR/release/texu
fi
CLK_TCK=$(getconf CLK_TCK)

# CPU ticks (user + system) of a pid.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
write_bytes() { awk '$1 == "write_bytes:" { print $2 }' "/proc/$1/io"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
# The store revision the controller's last node list was read at (every write bumps it).
store_revision() { "$TEXU" get nodes -o json | jq '.revision // .metadata.revision // 0'; }
# Waits up to $2 s for a line starting with $1 in the simulation's log; prints it.
sim_line() {
	local prefix=$1 timeout=$2 line
	for _ in $(seq $((timeout * 10))); do
		line=$(grep -m1 "^$prefix" "$SIM_LOG" || true)
		[[ -n $line ]] && echo "$line" && return 0
		kill -0 "$SIM_PID" 2>/dev/null || die "texu sim exited; its log: $(tail -5 "$SIM_LOG")"
		sleep 0.1
	done
	die "no '$prefix' line from texu sim within ${timeout}s; its log: $(tail -5 "$SIM_LOG")"
}

run_size() {
	local boards=$1 per=$2 containers=$(($1 * $2))
	local dir=$WORK/$boards
	rm -rf "$dir" && mkdir -p "$dir"
	say "$boards boards, $containers containers: starting a controller"
	RUST_LOG=warn "$TEXU" controller --data-dir "$dir/controller" --listen 127.0.0.1:0 \
		--no-client-config --cluster-cidr 198.19.0.0/16 --max-connections 8192 \
		>"$dir/controller.log" 2>&1 &
	CONTROLLER_PID=$!
	for _ in $(seq 200); do
		[[ -s $dir/controller/controller.addr ]] && break
		sleep 0.1
	done
	[[ -s $dir/controller/controller.addr ]] || die "the controller wrote no address: $(tail -5 "$dir/controller.log")"
	local server token
	server=https://$(head -1 "$dir/controller/controller.addr")
	token=$(cat "$dir/controller/admin.token")
	export TEXU_SERVER=$server TEXU_TOKEN=$token TEXU_CONFIG=/nonexistent/texu-bench.yaml \
		TEXU_CA_FILE=$dir/controller/ca.pem
	install -m 600 "$dir/controller/join.token" "$dir/join.token"

	SIM_LOG=$dir/sim.log
	local after=$((WARM + MEASURE + 5))
	RUST_LOG=warn "${SIM_BIN:-$TEXU}" sim --boards "$boards" --containers-per-board "$per" \
		--join-token-file "$dir/join.token" --prefix sim --power-off "$POWER_OFF" \
		--after "${after}s" --report-every "${REPORT_EVERY}s" >"$SIM_LOG" 2>"$dir/sim.err" &
	SIM_PID=$!
	local joined ready
	joined=$(sim_line "joined" "$READY_TIMEOUT")
	ready=$(sim_line "ready" "$READY_TIMEOUT")
	say "$joined; $ready"
	local t0=$SECONDS
	until [[ $("$TEXU" get containers -o json | jq '[.items[] | select(.status.phase == "Ready")] | length') -eq $containers ]]; do
		((SECONDS - t0 < READY_TIMEOUT)) || die "not every container is Ready after ${READY_TIMEOUT}s"
		sleep 1
	done
	say "all $containers containers Ready at the controller; warming up ${WARM}s"
	sleep "$WARM"

	local tick0 wb0 lines0 start_ns end_ns tick1 wb1 lines1 sim0 sim1 rev0 rev1
	rev0=$(store_revision)
	tick0=$(ticks "$CONTROLLER_PID")
	sim0=$(ticks "$SIM_PID")
	wb0=$(write_bytes "$CONTROLLER_PID")
	lines0=$(wc -l <"$SIM_LOG")
	start_ns=$(date +%s%N)
	say "measuring ${MEASURE}s"
	sleep "$MEASURE"
	tick1=$(ticks "$CONTROLLER_PID")
	sim1=$(ticks "$SIM_PID")
	lines1=$(wc -l <"$SIM_LOG")
	wb1=$(write_bytes "$CONTROLLER_PID")
	end_ns=$(date +%s%N)
	rev1=$(store_revision)
	local rss hwm threads secs cpu sim_cpu load
	load=$(cut -d' ' -f1-3 /proc/loadavg)
	rss=$(kib "$CONTROLLER_PID" VmRSS)
	hwm=$(kib "$CONTROLLER_PID" VmHWM)
	threads=$(kib "$CONTROLLER_PID" Threads)
	secs=$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
	cpu=$(awk -v t=$((tick1 - tick0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.1f", 100 * t / hz / s }')
	sim_cpu=$(awk -v t=$((sim1 - sim0)) -v hz="$CLK_TCK" -v s="$secs" 'BEGIN { printf "%.1f", 100 * t / hz / s }')
	# The simulation's heartbeat periods that ended inside the window.
	local beats
	beats=$(sed -n "$((lines0 + 1)),${lines1}p" "$SIM_LOG" | grep '^heartbeats:' || true)

	# The power cut: every event from here on, to find boards wrongly marked NotReady.
	"$TEXU" events --watch -o json >"$dir/events.ndjson" 2>/dev/null &
	EVENTS_PID=$!
	local off failover dark wrong
	off=$(sim_line "power off" $((after + 60)))
	failover=$(sim_line "failover" 120)
	sleep 3 # the detector's verdicts on the rest, if any, arrive within a grace period
	dark=$(sed 's/.*: //' <<<"$off" | tr ',' '\n' | jq -R . | jq -s .)
	wrong=$(jq -s --argjson dark "$dark" \
		'[.[] | select(.kind == "NodeNotReady") | select((.node as $n | $dark | index($n)) | not)] | length' \
		"$dir/events.ndjson")
	local not_ready_up moved_ok
	not_ready_up=$("$TEXU" get nodes -o json | jq --argjson dark "$dark" \
		'[.items[] | select((.metadata.name as $n | $dark | index($n)) | not) | select(.status.phase != "Ready")] | length')
	moved_ok=$("$TEXU" get containers -o json | jq --argjson dark "$dark" \
		'[.items[] | select(.status.phase == "Ready") | select((.spec.node as $n | $dark | index($n)) | not)] | length')
	stop_pid "$EVENTS_PID"
	EVENTS_PID=
	stop_pid "$SIM_PID"
	SIM_PID=
	local total
	total=$(grep '^total:' "$SIM_LOG" || echo "total: (none printed)")
	stop_pid "$CONTROLLER_PID"
	CONTROLLER_PID=
	unset TEXU_SERVER TEXU_TOKEN TEXU_CONFIG

	cat <<EOF

== $boards boards, $containers containers (heartbeat 500 ms, embedded store), $(date -u +%Y-%m-%dT%H:%M:%SZ), load $load
  $joined; $ready
  controller over ${secs} s idle: VmRSS $(mib "$rss") (VmHWM $(mib "$hwm")), CPU ${cpu} % of one core, $threads threads (texu sim: ${sim_cpu} %)
  controller disk writes in that window: $((wb1 - wb0)) bytes (/proc/PID/io write_bytes); store revisions in it: $((rev1 - rev0))
  heartbeat round trips in the window, per ${REPORT_EVERY} s period:
$(sed 's/^/    /' <<<"$beats")
  $off
  $failover
  boards that kept power marked NotReady: $wrong (events), $not_ready_up not Ready now (must be 0)
  containers Ready on boards with power after the cut: $moved_ok of $containers
  sim $total
EOF
}

mkdir -p "$WORK"
for size in $SIZES; do
	[[ $size =~ ^([0-9]+)x([0-9]+)$ ]] || die "SIZES: $size is not BOARDSxPER_BOARD"
	run_size "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
done

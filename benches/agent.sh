#!/usr/bin/env bash
# Agent benchmark (issue 3; targets in DESIGN.md section 10), on this one machine:
#   1. the resident memory of the agent process (the agent-only `texu-agent` binary, or
#      `texu agent` with AGENT_BIN=texu) while it runs 10 containers: VmRSS, PSS from
#      smaps_rollup, and the resident kB of each file mapped (binary, libc, liblxc...);
#   2. the time from `texu apply` to all 10 containers Ready, RUNS times (the role is deleted,
#      and its containers are gone from disk, between runs): min / median / max.
# It also prints, from the agent's debug log, how long each container's create and start took.
#
#   sudo benches/agent.sh
#
# Needs root, LXC and the busybox template (scripts/setup.sh), jq. Starts a controller on
# 127.0.0.1 and an agent with bridge txbench0 on 198.19.250.0/24; removes everything it made
# on exit, Ctrl-C or TERM (and, at start, what a SIGKILLed earlier run left). Settings (environment): RUNS (5), READY_TIMEOUT (120 s per run),
# SETTLE (2 s from all Ready to reading memory), TEXU_BENCH_WORK (/tmp/texu-bench-agent),
# IMAGE (template:busybox; `host` runs the board's own busybox instead, for comparison),
# AGENT_BIN (texu-agent; `texu` runs the agent as `texu agent`, from the one big binary).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${TEXU_BENCH_WORK:-/tmp/texu-bench-agent}
BRIDGE=txbench0
SUBNET=198.19.250.0/24
NODE=bench
ROLE=bench
REPLICAS=10
IMAGE=${IMAGE:-template:busybox}
case "$IMAGE" in
template:busybox) HTTPD='/bin/httpd' ;;
host) HTTPD='/bin/busybox, httpd' ;;
*) echo "IMAGE is template:busybox or host" >&2 && exit 1 ;;
esac
RUNS=${RUNS:-5}
READY_TIMEOUT=${READY_TIMEOUT:-120}
GONE_TIMEOUT=60
SETTLE=${SETTLE:-2} # seconds between all Ready and reading the agent's memory
AGENT_BIN=${AGENT_BIN:-texu-agent}
case "$AGENT_BIN" in
texu | texu-agent) ;;
*) echo "AGENT_BIN is texu-agent or texu" >&2 && exit 1 ;;
esac

say() { printf '[agent.sh] %s\n' "$*" >&2; }
die() {
	say "FAILED: $*"
	exit 1
}
now_ns() { date +%s%N; }
# Seconds, with milliseconds, from a duration in nanoseconds.
secs() { awk -v n="$1" 'BEGIN { printf "%.3f", n / 1e9 }'; }

case "$WORK" in
/ | "" | /tmp | /tmp/) die "TEXU_BENCH_WORK=$WORK is not a scratch directory" ;;
/*) ;;
*) die "TEXU_BENCH_WORK must be an absolute path" ;;
esac
[[ $(id -u) -eq 0 ]] || die "run as root (LXC containers and a bridge): sudo $0"
[[ $IMAGE == host || -x /usr/share/lxc/templates/lxc-busybox ]] || die "LXC's busybox template is missing: run scripts/setup.sh"
for tool in jq lxc-ls lxc-stop lxc-destroy ip cargo; do
	command -v "$tool" >/dev/null || die "$tool is not installed"
done

LXCPATH=$WORK/a/lxc
AGENT_PID=
CONTROLLER_PID=

# Stops a texu process we started, by its pid: our child, or one whose pid file an earlier run
# left (then only if its command line names this work dir, so a reused pid is left alone).
stop_texu() {
	local pid=$1
	[[ -n $pid ]] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$WORK/" || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# Removes everything a run makes (also what a killed earlier run left). Idempotent.
teardown() {
	# The agent first, so it does not start what we are about to destroy.
	stop_texu "${AGENT_PID:-$(cat "$WORK/agent.pid" 2>/dev/null || true)}"
	if [[ -d $LXCPATH ]]; then
		local name
		for name in $(lxc-ls -P "$LXCPATH" -1 2>/dev/null); do
			lxc-stop -P "$LXCPATH" -n "$name" -k >/dev/null 2>&1 || true
			lxc-destroy -P "$LXCPATH" -n "$name" -f >/dev/null 2>&1 ||
				say "could not destroy container $name"
		done
	fi
	stop_texu "${CONTROLLER_PID:-$(cat "$WORK/controller.pid" 2>/dev/null || true)}"
	if [[ -e /sys/class/net/$BRIDGE ]]; then
		ip link del "$BRIDGE" || say "could not delete bridge $BRIDGE"
	fi
	rm -rf "$WORK"
	# liblxc's lock files for the LXC path (it never removes them).
	rm -rf "/run/lxc/lock$WORK"
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	if [[ $rc -ne 0 && -f $WORK/agent.log ]]; then
		say "last lines of the agent's log:"
		tail -n 30 "$WORK/agent.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
		say "last lines of the controller's log:"
		tail -n 10 "$WORK/controller.log" >&2
	fi
	say "cleaning up"
	teardown
	exit "$rc"
}

if [[ -e $WORK || -e /sys/class/net/$BRIDGE ]]; then
	say "removing what an earlier run left in $WORK"
	teardown
fi
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ----------------------------------------------------------------------------------
say "building (cargo build --release --locked -p texu -p texu-agent)"
(cd "$ROOT" && cargo build --release --locked -p texu -p texu-agent)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
TEXU=$TARGET_DIR/release/texu
AGENT=$TARGET_DIR/release/$AGENT_BIN
[[ -x $TEXU && -x $AGENT ]] || die "$TEXU or $AGENT was not built"
# The agent's command: `texu-agent --server URL ARGS` or `texu --server URL agent ARGS`.
AGENT_SUB=()
[[ $AGENT_BIN == texu ]] && AGENT_SUB=(agent)

mkdir -p "$WORK"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- controller -----------------------------------------------------------------------------
RUST_LOG=warn "$TEXU" controller --data-dir "$WORK/c" --listen 127.0.0.1:0 --no-client-config \
	</dev/null >"$WORK/controller.log" 2>&1 &
CONTROLLER_PID=$!
echo "$CONTROLLER_PID" >"$WORK/controller.pid"

wait_until() { # timeout_seconds what command...
	local timeout=$1 what=$2
	shift 2
	local deadline=$(($(now_ns) + timeout * 1000000000))
	until "$@"; do
		(($(now_ns) < deadline)) || die "timed out after ${timeout} s waiting for $what"
		sleep 0.05
	done
}
# The controller writes its address with a final newline once it listens.
addr_written() { [[ -s $WORK/c/controller.addr && -z $(tail -c1 "$WORK/c/controller.addr") ]]; }
wait_until 20 "the controller to write its address" addr_written
TEXU_SERVER=https://$(cat "$WORK/c/controller.addr")
TEXU_TOKEN=$(cat "$WORK/c/admin.token")
TEXU_CONFIG=$WORK/client.yaml
TEXU_CA_FILE=$WORK/c/ca.pem
export TEXU_SERVER TEXU_TOKEN TEXU_CONFIG TEXU_CA_FILE
unset RUST_LOG
say "controller $CONTROLLER_PID at $TEXU_SERVER"

# --- agent ----------------------------------------------------------------------------------
NO_COLOR=1 RUST_LOG=warn,texu_agent=debug "$AGENT" --server "$TEXU_SERVER" "${AGENT_SUB[@]}" --name "$NODE" \
	--data-dir "$WORK/a" --join-token-file "$WORK/c/join.token" \
	--bridge "$BRIDGE" --subnet "$SUBNET" </dev/null >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
echo "$AGENT_PID" >"$WORK/agent.pid"
node_ready() {
	kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited"
	"$TEXU" get nodes -o json 2>/dev/null |
		jq -e --arg n "$NODE" 'any(.items[]; .metadata.name == $n and .status.phase == "Ready")' >/dev/null
}
wait_until 30 "node $NODE to be Ready" node_ready
say "agent $AGENT_PID: node $NODE Ready"
MEM_IDLE_RSS=$(awk '/^VmRSS:/ { print $2 }' "/proc/$AGENT_PID/status")

cat >"$WORK/role.yaml" <<EOF
apiVersion: texu.io/v1
kind: Role
metadata:
  name: $ROLE
spec:
  replicas: $REPLICAS
  image: $IMAGE
  command: [$HTTPD, -f, -p, "8080", -h, /etc]
  ports:
  - name: http
    port: 8080
  health:
    readiness:
      http: {path: /hostname, port: http}
      periodSeconds: 0.1
EOF

count_ready() {
	"$TEXU" get containers -o json 2>/dev/null |
		jq '[.items[] | select(.status.phase == "Ready")] | length' 2>/dev/null || echo 0
}
count_all() {
	"$TEXU" get containers -o json 2>/dev/null | jq '.items | length' 2>/dev/null || echo 1
}

# Memory of a pid in kB: VmRSS VmHWM RssAnon RssFile Pss Pss_Anon Pss_File Threads (- if unknown).
mem_of() {
	local pid=$1
	local status
	status=$(awk '/^(VmRSS|VmHWM|RssAnon|RssFile|Threads):/ { v[$1] = $2 }
		END { printf "%s %s %s %s %s", v["VmRSS:"], v["VmHWM:"], v["RssAnon:"], v["RssFile:"], v["Threads:"] }' \
		"/proc/$pid/status")
	local pss="- - -"
	if [[ -r /proc/$pid/smaps_rollup ]]; then
		pss=$(awk '/^(Pss|Pss_Anon|Pss_File):/ { v[$1] = $2 }
			END { printf "%s %s %s", (v["Pss:"] == "" ? "-" : v["Pss:"]),
				(v["Pss_Anon:"] == "" ? "-" : v["Pss_Anon:"]), (v["Pss_File:"] == "" ? "-" : v["Pss_File:"]) }' \
			"/proc/$pid/smaps_rollup")
	fi
	read -r rss hwm anon file threads <<<"$status"
	echo "$rss $hwm $anon $file $pss $threads"
}

# Resident kB of each file the agent maps (and [anon] for the rest), largest first: "kB name".
mapped() {
	awk '/^[0-9a-f]+-[0-9a-f]+ / { name = (NF >= 6) ? $6 : "[anon]"; sub(/.*\//, "", name) }
		/^Rss:/ { rss[name] += $2 }
		END { for (n in rss) if (rss[n] > 0) print rss[n], n }' "/proc/$1/smaps" | sort -rn
}

# LXC's per-container monitor processes ("[lxc monitor] LXCPATH NAME"): liblxc forks them from
# the agent when it starts a container, so they are not part of the agent's own figure; summed
# here (count, RSS kB, PSS kB) to show what they cost.
monitors() {
	local n=0 rss=0 pss=0 p cmd
	for p in /proc/[0-9]*; do
		cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		[[ $cmd == "[lxc monitor] $LXCPATH "* ]] || continue
		n=$((n + 1))
		rss=$((rss + $(awk '/^VmRSS:/ { print $2 }' "$p/status" 2>/dev/null || echo 0)))
		pss=$((pss + $(awk '/^Pss:/ { print $2 }' "$p/smaps_rollup" 2>/dev/null || echo 0)))
	done
	echo "$n $rss $pss"
}

# Per-container times from the agent's log lines after line $1, for a run that applied at $2 (ns):
# the "started" debug line (LXC start, elapsed=...) and the "container started" info line that
# follows it. Creates run one after another, so create ~= the gap since the previous container
# (since apply for the first) minus its start.
to_ns() { date -d "$1" +%s%N; }
per_container() {
	local from=$1 t_apply=$2
	local prev=$t_apply ts name el start_ns gap_ns create_ns
	printf '    %-10s %9s %9s %9s\n' container create start total
	while read -r ts name el; do
		local t
		t=$(to_ns "$ts")
		start_ns=$(awk -v e="$el" 'BEGIN {
			if (match(e, /[0-9.]+/)) { n = substr(e, RSTART, RLENGTH); u = substr(e, RSTART + RLENGTH) }
			m = (u == "s") ? 1e9 : (u == "ms") ? 1e6 : (u == "µs" || u == "us") ? 1e3 : (u == "ns") ? 1 : 0
			printf "%d", n * m }')
		gap_ns=$((t - prev))
		create_ns=$((gap_ns - start_ns))
		printf '    %-10s %8ss %8ss %8ss\n' "$name" "$(secs "$create_ns")" "$(secs "$start_ns")" "$(secs "$gap_ns")"
		echo "$create_ns $start_ns" >>"$WORK/times"
		prev=$t
		echo "$t" >"$WORK/last_start"
	done < <(tail -n +"$((from + 1))" "$WORK/agent.log" | sed 's/\x1b\[[0-9;]*m//g' |
		awk '/ started / && /elapsed=/ && !/container started/ {
			ts = $1; name = ""; el = ""
			for (i = 2; i <= NF; i++) {
				if ($i ~ /^container=/) { name = $i; sub(/^container=/, "", name); gsub(/"/, "", name) }
				if ($i ~ /^elapsed=/) { el = $i; sub(/^elapsed=/, "", el) }
			}
			print ts, name, el }')
}

stats() { # prints "min median max" of the numbers on stdin
	sort -g | awk '{ v[NR] = $1 } END {
		if (NR == 0) { print "- - -"; exit }
		med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
		printf "%.3f %.3f %.3f\n", v[1], med, v[NR] }'
}

# --- runs -----------------------------------------------------------------------------------
: >"$WORK/times"
: >"$WORK/results"
for run in $(seq 1 "$RUNS"); do
	say "run $run/$RUNS: apply $REPLICAS replicas"
	log_from=$(wc -l <"$WORK/agent.log")
	t0=$(now_ns)
	"$TEXU" apply -f "$WORK/role.yaml" >/dev/null
	deadline=$((t0 + READY_TIMEOUT * 1000000000))
	peak_ready=0
	while :; do
		ready=$(count_ready)
		((ready > peak_ready)) && peak_ready=$ready
		((ready >= REPLICAS)) && break
		if (($(now_ns) > deadline)); then
			"$TEXU" get containers -o wide >&2 || true
			die "run $run: only $peak_ready of $REPLICAS containers Ready after ${READY_TIMEOUT} s"
		fi
		kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited"
		sleep 0.05
	done
	t1=$(now_ns)
	ready_s=$(secs $((t1 - t0)))
	echo "run $run: apply -> $REPLICAS Ready in ${ready_s} s; per container (from the agent's log):"
	echo "$t0" >"$WORK/last_start"
	per_container "$log_from" "$t0"
	after_s=$(secs $((t1 - $(cat "$WORK/last_start"))))
	echo "    last container started -> all Ready seen by the CLI: ${after_s} s"

	sleep "$SETTLE"
	read -r rss hwm anon file pss pss_anon pss_file threads <<<"$(mem_of "$AGENT_PID")"
	read -r mon_n mon_rss mon_pss <<<"$(monitors)"
	running=$(lxc-ls -P "$LXCPATH" --running -1 | wc -l)
	mapped "$AGENT_PID" >"$WORK/mapped"
	echo "    agent with $running running containers: VmRSS ${rss} kB (anon ${anon}, file ${file})," \
		"PSS ${pss} kB (anon ${pss_anon}, file ${pss_file}), VmHWM ${hwm} kB, ${threads} threads;" \
		"$mon_n lxc monitor processes: RSS ${mon_rss} kB, PSS ${mon_pss} kB in all"
	echo "$ready_s $rss $pss $hwm $pss_anon $pss_file $threads $mon_n $mon_rss $mon_pss $running $after_s $anon $file" \
		>>"$WORK/results"

	td0=$(now_ns)
	"$TEXU" delete role "$ROLE" >/dev/null
	all_gone() { [[ $(count_all) -eq 0 && -z $(lxc-ls -P "$LXCPATH" -1 2>/dev/null) ]]; }
	wait_until "$GONE_TIMEOUT" "the role's containers to be gone" all_gone
	echo "    delete role -> containers gone from the API and from disk: $(secs $(($(now_ns) - td0))) s"
done

# --- summary --------------------------------------------------------------------------------
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
read -r r_min r_med r_max <<<"$(awk '{ print $1 }' "$WORK/results" | stats)"
read -r a_min a_med a_max <<<"$(awk '{ print $12 }' "$WORK/results" | stats)"
read -r c_min c_med c_max <<<"$(awk '{ print $1 / 1e9 }' "$WORK/times" | stats)"
read -r s_min s_med s_max <<<"$(awk '{ print $2 / 1e9 }' "$WORK/times" | stats)"
# Memory: the last run's steady state, and the range over all runs.
read -r _ rss pss hwm pss_anon pss_file threads mon_n mon_rss mon_pss running _ anon file <<<"$(tail -n 1 "$WORK/results")"
mb() { awk -v k="$1" 'BEGIN { if (k == "-" || k == "") print "n/a"; else printf "%.1f MiB", k / 1024 }'; }
rss_range=$(awk '{ print $2 / 1024 }' "$WORK/results" | stats)
pss_range=$(awk '$3 != "-" { print $3 / 1024 }' "$WORK/results" | stats)
hwm_max=$(awk '{ print $4 }' "$WORK/results" | sort -n | tail -n 1)
rss_ok=$(awk -v k="$rss" 'BEGIN { print (k / 1024 < 10) ? "met" : "NOT met" }')
ready_ok=$(awk -v s="$r_med" 'BEGIN { print (s < 2) ? "met (median)" : "NOT met (median)" }')

cat <<EOF

===================== texu agent benchmark =====================
date        $(date -u '+%Y-%m-%d %H:%M UTC')
machine     $(nproc) cores ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), LXC $(lxc-ls --version)
load avg    before $LOAD_BEFORE, after $LOAD_AFTER
agent       $AGENT ($(stat -c %s "$AGENT") bytes)$([[ $AGENT_BIN == texu ]] && echo ", run as texu agent")
runs        $RUNS x apply of $REPLICAS replicas of $IMAGE (httpd, HTTP readiness every 0.1 s)

agent memory with $running running containers (last run, ${SETTLE} s after all Ready)
  VmRSS     $(mb "$rss")   (anon $(mb "$anon"), file $(mb "$file"); over runs, MiB: min/median/max $rss_range; idle before any container $(mb "$MEM_IDLE_RSS"))
  PSS       $(mb "$pss")   (anon $(mb "$pss_anon"), file $(mb "$pss_file"); over runs, MiB: $pss_range)
  peak      VmHWM $(mb "$hwm_max"), $threads threads
  + $mon_n LXC monitor processes (forked by liblxc, one per container): RSS $(mb "$mon_rss"), PSS $(mb "$mon_pss") in all
    (they share the agent's pages, which lowers its PSS; agent + monitors PSS $(mb "$(awk -v a="$pss" -v b="$mon_pss" 'BEGIN { print a + b }')"))
  target    < 10 MB (taken as MiB) VmRSS: $rss_ok
  resident by mapping (last run, kB): $(head -n 8 "$WORK/mapped" | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')

apply -> all $REPLICAS Ready (s)   min $r_min   median $r_med   max $r_max
  runs (s): $(awk '{ printf "%s ", $1 }' "$WORK/results")
  per container, all runs (s): create min/median/max $c_min / $c_med / $c_max,
                               start  min/median/max $s_min / $s_med / $s_max
  last start -> all Ready seen (s): min/median/max $a_min / $a_med / $a_max
  target    < 2 s: $ready_ok
================================================================
EOF

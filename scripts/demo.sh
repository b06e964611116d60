#!/usr/bin/env bash
# Sets up the machine, builds Texu and runs the local demo. Ctrl-C stops it and cleans up.
#
# Until the multi-board `texu demo` lands (issue 4), this starts a controller on loopback with
# its state in a temporary directory, applies manifests/examples/ and shows the cluster's state.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then bash scripts/setup.sh; else sudo bash scripts/setup.sh; fi
cargo build --release --locked
texu=target/release/texu
work=$(mktemp -d /tmp/texu-demo.XXXXXX)
export TEXU_CONFIG="$work/client.yaml"
"$texu" controller --data-dir "$work/controller" --listen 127.0.0.1:0 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
for _ in $(seq 100); do [ -s "$TEXU_CONFIG" ] && break; sleep 0.1; done
[ -s "$TEXU_CONFIG" ] || { echo "demo: the controller did not start" >&2; exit 1; }
"$texu" apply -f manifests/examples/
echo
"$texu" status
echo
"$texu" get roles -o wide
echo
echo "Try:  TEXU_CONFIG=$TEXU_CONFIG $texu get roles app -o yaml"
echo "      curl -s http://$(cat "$work/controller/controller.addr")/metrics"
echo "Ctrl-C stops the controller and removes $work."
wait "$pid"

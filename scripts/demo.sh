#!/usr/bin/env bash
# Sets up the machine, builds Texu and runs `texu demo`: a controller and three boards (network
# namespaces on an overlay bridge, 198.18.0.0/24), each with an agent running LXC containers of
# the demo stack (manifests/demo/). Ctrl-C stops it and removes everything it made.
# Arguments go to `texu demo`, e.g. `scripts/demo.sh --boards 5` or `scripts/demo.sh --stack light`.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" bash scripts/setup.sh
cargo build --release --locked
# The demo's exchange replicas run on the `host` image, which sees this machine's /usr.
"${sudo[@]}" install -m 0755 target/release/texu-exchange /usr/local/bin/texu-exchange
exec "${sudo[@]}" target/release/texu demo "$@"

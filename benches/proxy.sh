#!/usr/bin/env bash
# Proxy benchmark (issue 11): runs benches/proxy.rs, which starts a 3-board local cluster with
# the demo proxy (real Apache httpd) over busybox web responders and prints
#   1. the time from a new web replica's Ready to its first answer through a proxy;
#   2. under 100 requests/s for 30 s from the host namespace, a board holding a web replica
#      powered off: failed requests and share, p50/p99, time until the dead member is gone from
#      the proxy's rendered config;
#   3. a proxy's board powered off: time until the replacement proxy is Ready and answers.
#
#   sudo benches/proxy.sh            # ROUNDS=5 PROXY_ROUNDS=3 by default
#
# Uses the dev profile (the debug `texu` binary the tests build), so the figures include an
# unoptimized agent and controller; Apache is Debian's. Needs root, LXC, apache2, curl
# (scripts/setup.sh). The cluster removes everything it made when the run ends.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
nice -n 5 cargo build --bin texu
nice -n 5 cargo bench --profile dev --bench proxy

#!/usr/bin/env bash
# Sets up this machine (Debian packages) and runs every check and test Texu has.
# This is the README's test command and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/setup.sh
else
  sudo bash scripts/setup.sh
fi
export CARGO_TERM_COLOR=never
echo "== format"; cargo fmt --all -- --check
echo "== lint";   cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build";  cargo build --workspace --all-targets --locked
# The Rastru stack's exchange replicas (tests/rastru.rs) run on the `host` image, which sees
# this machine's /usr; installed by rename, so a running copy is never overwritten.
install_exchange() { install -m 0755 target/debug/texu-exchange /usr/local/bin/.texu-exchange.new &&
  mv /usr/local/bin/.texu-exchange.new /usr/local/bin/texu-exchange; }
if [ "$(id -u)" -eq 0 ]; then install_exchange; else sudo bash -c "$(declare -f install_exchange); install_exchange"; fi
echo "== test";   cargo test --workspace --locked --no-fail-fast

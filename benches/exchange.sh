#!/usr/bin/env bash
# Exchange benchmark (issue 12): the real `texu-exchange` binary (release build) on each
# backend at a fixed offered load, open loop (latency counts from each request's scheduled
# start): committed transfers per second, p50/p99 latency, and the app's resident memory.
#
#   benches/exchange.sh [RATE] [SECONDS] [BACKENDS]
#
# Defaults: 200 transfers/s for 20 s on file,etcd,cassandra. etcd needs /usr/bin/etcd and
# cassandra texu-cassandra (scripts/setup.sh); each is started on loopback with a temp data dir
# and stopped afterwards. 20 accounts without limits that bind, 32 client threads.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export EXCHANGE_BENCH_RATE=${1:-200}
export EXCHANGE_BENCH_SECONDS=${2:-20}
export EXCHANGE_BENCH_BACKENDS=${3:-file,etcd,cassandra}
cd "$ROOT"
cargo bench -p texu-exchange --bench load

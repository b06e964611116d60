#!/usr/bin/env bash
# Installs every Debian package Texu's build, demo and tests need. Idempotent: safe to run again.
set -euo pipefail
PKGS=(
  build-essential pkg-config clang libclang-dev   # lxc-sys bindgen, C builds
  lxc lxc-dev lxc-templates busybox-static        # runtime, liblxc, busybox template
  tar xz-utils zstd                               # unpacking rootfs images
  protobuf-compiler                               # etcd-client (tonic/prost) build
  etcd-server etcd-client                         # real etcd for store tests
  libprotobuf-dev                                 # descriptor.proto for etcd-client
  apache2 iproute2 nftables curl procps psmisc    # proxy tier, networking, test tools
  openjdk-17-jre-headless maven unzip             # Apache Cassandra (jars from Maven Central)
  chromium chromium-driver                        # the /ui dashboard test (headless, WebDriver)
  prometheus                                      # promtool for tests/metrics.rs
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts etcd and apache2 as services on install; the tests start their own on loopback.
for svc in etcd apache2 prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done
# Apache Cassandra 5.0 jars, config templates and the texu-cassandra launchers (no Debian package
# ships Cassandra); fetched once, skipped while the stamp matches scripts/cassandra/pom.xml.
"$(dirname "$(readlink -f "$0")")/cassandra/install.sh"
# Unprivileged containers: the agent maps container ids onto a range of root's subordinate ids.
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^root:' "$f" 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "setup: need root to add a root:1000000:65536 range to $f" >&2; exit 1
    fi
    echo "root:1000000:65536" >> "$f"
  fi
done
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
echo "setup: all packages present"

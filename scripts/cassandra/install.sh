#!/usr/bin/env bash
# Installs Apache Cassandra (the version in pom.xml beside this script) for texu-cassandra:
# cassandra-all and its runtime dependencies from Maven Central into
# /usr/local/share/texu-cassandra/lib (TEXU_CASSANDRA_HOME), the config templates into its conf/,
# and texu-cassandra, texu-nodetool and texu-cassandra-ready into /usr/local/bin (BIN_DIR).
# With TEXU_CASSANDRA_JARS=DIR (Apache's Debian package: /usr/share/cassandra) it fetches
# nothing and installs only the templates and scripts; texu-cassandra then needs the same
# TEXU_CASSANDRA_JARS in its environment.
# Needs java and mvn (scripts/setup.sh installs openjdk-17-jre-headless and maven first).
# Idempotent: the jars are fetched again only when lib/.texu-stamp does not match pom.xml.
set -euo pipefail
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
home=${TEXU_CASSANDRA_HOME:-/usr/local/share/texu-cassandra}
bin_dir=${BIN_DIR:-/usr/local/bin}
stamp="$home/lib/.texu-stamp"
want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)

if [ -n "${TEXU_CASSANDRA_JARS:-}" ]; then
  # Cassandra from elsewhere (Apache's Debian package: TEXU_CASSANDRA_JARS=/usr/share/cassandra).
  compgen -G "$TEXU_CASSANDRA_JARS/apache-cassandra-*.jar" >/dev/null || compgen -G "$TEXU_CASSANDRA_JARS/cassandra-all-*.jar" >/dev/null \
    || { echo "cassandra install: no Cassandra jar in $TEXU_CASSANDRA_JARS" >&2; exit 1; }
  echo "cassandra install: using the jars in $TEXU_CASSANDRA_JARS (nothing fetched)"
elif [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  command -v mvn >/dev/null || { echo "cassandra install: mvn not found (apt-get install maven)" >&2; exit 1; }
  version=$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$here/pom.xml")
  echo "cassandra install: fetching org.apache.cassandra:cassandra-all:$version with its dependencies"
  mkdir -p "$home"
  tmp=$(mktemp -d "$home/.lib.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  if ! mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" > "$tmp.log" 2>&1; then
    echo "cassandra install: maven could not fetch cassandra-all $version; its output:" >&2
    cat "$tmp.log" >&2; rm -f "$tmp.log"; exit 1
  fi
  rm -f "$tmp.log"
  [ -f "$tmp/cassandra-all-$version.jar" ] || { echo "cassandra install: no cassandra-all-$version.jar fetched" >&2; exit 1; }
  echo "$want" > "$tmp/.texu-stamp"
  rm -rf "$home/lib.old"
  [ -d "$home/lib" ] && mv "$home/lib" "$home/lib.old"
  mv "$tmp" "$home/lib"
  rm -rf "$home/lib.old"
  trap - EXIT
  echo "cassandra install: $(ls "$home/lib" | wc -l) jars in $home/lib"
fi
# mktemp made lib/ 0700: open it (also on installs made before this line) so that an
# unprivileged container's root, nobody on the board, can read the jars through the host image.
chmod 0755 "$home/lib"
chmod -R a+rX "$home/lib"

mkdir -p "$home/conf" "$bin_dir"
install -m 0644 "$here/cassandra.yaml.in" "$here/logback.xml" "$here/logback-tools.xml" "$home/conf/"
# JIT hints Cassandra ships (conf/hotspot_compiler; also inside its jar).
main_jar=$(compgen -G "${TEXU_CASSANDRA_JARS:-$home/lib}/cassandra-all-*.jar" || compgen -G "${TEXU_CASSANDRA_JARS:-$home/lib}/apache-cassandra-*.jar" || true)
main_jar=${main_jar%%$'\n'*}
unzip -p "$main_jar" META-INF/hotspot_compiler > "$home/conf/hotspot_compiler.tmp" 2>/dev/null \
  && mv "$home/conf/hotspot_compiler.tmp" "$home/conf/hotspot_compiler" || rm -f "$home/conf/hotspot_compiler.tmp"
for s in texu-cassandra texu-nodetool texu-cassandra-ready; do
  install -m 0755 "$here/$s" "$bin_dir/$s"
done
echo "cassandra install: $(basename "$main_jar") ready; texu-cassandra in $bin_dir"

#!/bin/sh
# Controller memory with ten watches from revision 1 over a large history (the review's attack:
# 250 MB -> 3.9 GB). Starts a controller on loopback in a temp dir with compaction off, writes
# N revisions of a role with a big env value, opens ten watches from revision 1 that never read,
# and prints the controller's resident memory before and after. Usage:
#   benches/watch_memory.sh [path/to/texu] [revisions] [value-bytes]
set -eu
TEXU=${1:-target/release/texu}
N=${2:-200}
SIZE=${3:-500000}
DIR=$(mktemp -d)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    [ -n "${CTRL:-}" ] && kill "$CTRL" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
RUST_LOG=error "$TEXU" controller --data-dir "$DIR/c" --listen 127.0.0.1:0 --no-client-config \
    --compact-every 1h >/dev/null 2>&1 &
CTRL=$!
while [ ! -s "$DIR/c/controller.addr" ]; do sleep 0.1; done
ADDR=$(cat "$DIR/c/controller.addr")
TOKEN=$(cat "$DIR/c/admin.token")
rss() { awk '/VmRSS/ {print $2 / 1024 " MB"}' "/proc/$CTRL/status"; }
python3 - "$ADDR" "$TOKEN" "$N" "$SIZE" <<'PY'
import http.client, json, sys
addr, token, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port))
for i in range(n):
    body = json.dumps({"apiVersion": "texu.io/v1", "kind": "Role", "metadata": {"name": "big"},
                       "spec": {"image": "host", "replicas": 0, "env": {"PAD": str(i) + "x" * size}}})
    conn.request("PUT", "/v1/roles/big", body, {"Authorization": "Bearer " + token})
    r = conn.getresponse(); r.read()
    assert r.status in (200, 201), r.status
PY
echo "history: $N revisions of a ${SIZE}-byte value; state.redb $(du -m "$DIR/c/state.redb" | cut -f1) MB"
echo "controller RSS before the watches: $(rss)"
for i in 1 2 3 4 5 6 7 8 9 10; do
    python3 -c '
import socket, sys, time
s = socket.create_connection(("'"${ADDR%:*}"'", '"${ADDR##*:}"'))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(b"GET /v1/roles?watch=true&revision=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '"$TOKEN"'\r\n\r\n")
time.sleep(60)
' &
    PIDS="$PIDS $!"
done
sleep 10
echo "controller RSS with ten watches from revision 1 that do not read: $(rss)"

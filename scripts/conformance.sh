#!/usr/bin/env bash
# Conformance of kvstore-server's memcached dialect:
#   1. memccapable -a and -b (libmemcached's memcapable; Debian's
#      libmemcached-tools names it memccapable): all 27 ASCII tests and all
#      27 binary-protocol tests must pass on the same port;
#   2. a cross-check with a real client library from another language
#      (Python's pymemcache): set/get/gets/cas/incr/delete/flags;
#   3. libmemcached's memcping, memcstat and memcdump, Debian's memcached-tool
#      (stats, settings, dump) and a scrape of the stats groups the
#      Prometheus memcached_exporter reads;
#   4. when nutcracker (twemproxy) is installed, the same client through it.
# Installs what is missing, builds the release server, starts it on free
# ports in a temporary directory, and stops it by PID. Exits non-zero on any
# failure. Run from anywhere: scripts/conformance.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v memccapable >/dev/null 2>&1 && ! command -v memcapable >/dev/null 2>&1; then
    echo "conformance: installing libmemcached-tools" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmemcached-tools >/dev/null
fi
MEMCAPABLE=$(command -v memccapable || command -v memcapable)
MEMCACHED_TOOL=/usr/share/memcached/scripts/memcached-tool
if [ ! -f "$MEMCACHED_TOOL" ]; then
    echo "conformance: installing memcached (for memcached-tool)" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null
fi

if ! python3 -c 'import pymemcache' >/dev/null 2>&1; then
    echo "conformance: installing pymemcache" >&2
    python3 -m pip install --quiet pymemcache 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages pymemcache
fi

cargo build --release --quiet -p kvstore-net --bin kvstore-server
BIN=target/release/kvstore-server

mkdir -p target
WORK=$(mktemp -d -p "$PWD/target" conformance.XXXXXX)
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Created first, so the wait below never reads a file not there yet.
: >"$WORK/out"
"$BIN" --dir "$WORK/data" --port 0 --memcached-port 0 >"$WORK/out" 2>"$WORK/err" &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 200); do
    PORT=$(sed -n 's/^listening on .*:\([0-9][0-9]*\) (memcached)$/\1/p' "$WORK/out")
    [ -n "$PORT" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "conformance: server exited early:" >&2
        cat "$WORK/err" >&2
        exit 1
    fi
    sleep 0.05
done
if [ -z "$PORT" ]; then
    echo "conformance: server did not announce its memcached port" >&2
    exit 1
fi
echo "conformance: kvstore-server pid $SERVER_PID, memcached dialect on 127.0.0.1:$PORT"

for MODE in a b; do
    NAME=$([ "$MODE" = a ] && echo ASCII || echo binary)
    echo "== $MEMCAPABLE -$MODE"
    set +e
    timeout 120 "$MEMCAPABLE" -"$MODE" -t 10 -h 127.0.0.1 -p "$PORT" | tee "$WORK/memcapable.log"
    STATUS=${PIPESTATUS[0]}
    set -e
    PASSED=$(grep -c '\[pass\]' "$WORK/memcapable.log" || true)
    if [ "$STATUS" -ne 0 ] || [ "$PASSED" -ne 27 ] || ! grep -q 'All tests passed' "$WORK/memcapable.log"; then
        echo "conformance: memcapable: $PASSED of 27 $NAME tests passed (exit $STATUS)" >&2
        exit 1
    fi
    echo "conformance: memcapable: 27 of 27 $NAME tests passed"
done

echo "== pymemcache cross-check"
python3 - "$PORT" <<'PY'
import sys
from pymemcache.client.base import Client

port = int(sys.argv[1])
c = Client(("127.0.0.1", port), connect_timeout=5, timeout=5, default_noreply=False)

def check(cond, what):
    if not cond:
        raise SystemExit("pymemcache: FAILED: " + what)

check(c.set("py:k", b"v1", flags=7), "set")
value = c.get("py:k")
check(value == b"v1", "get returns the value")
got = c.get_many(["py:k", "py:missing"])
check(got == {"py:k": b"v1"}, "get_many omits misses")
value, cas = c.gets("py:k")
check(value == b"v1" and cas is not None and int(cas) > 0, "gets returns a cas")
check(c.cas("py:k", b"v2", cas) is True, "cas with the current cas stores")
check(c.cas("py:k", b"v3", cas) is False, "cas with a stale cas is EXISTS")
check(c.get("py:k") == b"v2", "value after cas")
check(c.cas("py:nope", b"x", 1) is None, "cas on a missing key is NOT_FOUND")
# flags travel with the value: read the raw VALUE line
c.set("py:flags", b"x", flags=123456)
raw = c.raw_command(b"get py:flags", b"END")
check(raw.startswith(b"VALUE py:flags 123456 1\r\n"), "flags returned as given: %r" % raw)
check(c.set("py:n", b"41"), "set counter")
check(c.incr("py:n", 1) == 42, "incr")
check(c.decr("py:n", 100) == 0, "decr stops at 0")
check(c.incr("py:none", 1) is None, "incr on a missing key")
check(c.add("py:k", b"x") is False, "add on an existing key")
check(c.replace("py:none", b"x") is False, "replace on a missing key")
check(c.append("py:k", b"!") is True and c.get("py:k") == b"v2!", "append")
check(c.prepend("py:k", b"<") is True and c.get("py:k") == b"<v2!", "prepend")
check(c.touch("py:k", 100) is True, "touch")
check(c.delete("py:k") is True, "delete")
check(c.delete("py:k") is False, "delete of a missing key")
check(c.get("py:k") is None, "get after delete")
version = c.version()
check(all(ch.isdigit() or ch == "." for ch in version.decode()), "version is digits and dots: %r" % version)
stats = c.stats()
for name in [b"pid", b"uptime", b"time", b"version", b"curr_connections", b"total_connections",
             b"cmd_get", b"cmd_set", b"get_hits", b"get_misses", b"curr_items"]:
    check(name in stats, "stats has %s" % name.decode())
check(c.flush_all() is True and c.get("py:n") is None, "flush_all")
c.close()
print("conformance: pymemcache: all checks passed")
PY

echo "== libmemcached tools, memcached-tool, exporter-style scrape"
SERVERS="--servers=127.0.0.1:$PORT"
python3 -c 'import sys
from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])), default_noreply=False)
c.set("tool:a", b"a", flags=4); c.set("tool:b", b"b", expire=100000)' "$PORT"
memcping "$SERVERS"
memcstat "$SERVERS" | grep -q "version: 1.6.18" || { echo "conformance: memcstat: no version" >&2; exit 1; }
[ "$(memcdump "$SERVERS" | sort | tr '\n' ' ')" = "tool:a tool:b " ] \
    || { echo "conformance: memcdump: wrong keys" >&2; exit 1; }
perl "$MEMCACHED_TOOL" "127.0.0.1:$PORT" stats | tr -d "\r" | grep -Eq '^ +curr_items +2$' \
    || { echo "conformance: memcached-tool stats: no curr_items" >&2; exit 1; }
perl "$MEMCACHED_TOOL" "127.0.0.1:$PORT" settings | tr -d "\r" | grep -Eq '^ +maxconns +[0-9]+$' \
    || { echo "conformance: memcached-tool settings: no maxconns" >&2; exit 1; }
perl "$MEMCACHED_TOOL" "127.0.0.1:$PORT" dump 2>/dev/null | grep -q "^add tool:a 4 0 1" \
    || { echo "conformance: memcached-tool dump: tool:a missing" >&2; exit 1; }
python3 - "$PORT" <<'PY'
# What memcached_exporter reads; a value it cannot parse marks the server down.
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
def group(cmd):
    s.sendall(cmd + b"\r\n")
    out = {}
    for line in f:
        if line == b"END\r\n":
            return out
        _, name, value = line.decode().split()
        out[name] = value
def check(cond, what):
    if not cond:
        raise SystemExit("scrape: FAILED: " + what)
stats = group(b"stats")
for name in ["uptime", "time", "cmd_set", "cmd_flush", "cas_badval", "bytes", "limit_maxbytes",
             "curr_items", "total_items", "bytes_read", "bytes_written", "curr_connections",
             "total_connections", "rejected_connections", "evictions", "store_too_large",
             "accepting_conns"] + [op + "_" + r for op in ["get", "delete", "incr", "decr", "cas", "touch"]
                                   for r in ["hits", "misses"]]:
    check(name in stats, "stats lacks " + name)
    float(stats[name])
for name in ["rusage_user", "rusage_system"]:
    sec, usec = stats[name].split(".")
    check(len(usec) == 6, name + " is not sec.usec")
float(group(b"stats settings")["maxconns"])
for name, value in list(group(b"stats items").items()) + list(group(b"stats slabs").items()):
    float(value)
print("conformance: exporter-style scrape: all checks passed")
PY

# A proxy in front of the server (twemproxy/nutcracker), when installed:
# proxies must work unchanged.
if command -v nutcracker >/dev/null 2>&1; then
    echo "== nutcracker (twemproxy) in front of kvstore-server"
    NUT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$WORK/nutcracker.yml" <<YML
kv:
  listen: 127.0.0.1:$NUT_PORT
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:$PORT:1
YML
    nutcracker -c "$WORK/nutcracker.yml" -o "$WORK/nutcracker.log" &
    NUT_PID=$!
    set +e
    python3 - "$NUT_PORT" <<'PY'
import sys, time
from pymemcache.client.base import Client
port = int(sys.argv[1])
deadline = time.time() + 10
while True:
    try:
        c = Client(("127.0.0.1", port), connect_timeout=2, timeout=5, default_noreply=False)
        c.get("probe")
        break
    except Exception:
        if time.time() > deadline:
            raise SystemExit("nutcracker: FAILED: proxy not reachable")
        time.sleep(0.1)
def check(cond, what):
    if not cond:
        raise SystemExit("nutcracker: FAILED: " + what)
check(c.set("proxy:k", b"v", flags=3), "set through the proxy")
check(c.get("proxy:k") == b"v", "get through the proxy")
check(c.get_many(["proxy:k", "proxy:none"]) == {"proxy:k": b"v"}, "multi-get through the proxy")
value, cas = c.gets("proxy:k")
check(value == b"v" and c.cas("proxy:k", b"w", cas) is True, "gets/cas through the proxy")
check(c.set("proxy:n", b"1") and c.incr("proxy:n", 2) == 3, "incr through the proxy")
check(c.delete("proxy:k") is True and c.get("proxy:k") is None, "delete through the proxy")
print("conformance: nutcracker: all checks passed")
PY
    NUT_STATUS=$?
    set -e
    kill -TERM "$NUT_PID" 2>/dev/null || true
    wait "$NUT_PID" 2>/dev/null || true
    [ "$NUT_STATUS" -eq 0 ] || exit 1
else
    echo "conformance: nutcracker not installed; proxy check skipped"
fi

kill -TERM "$SERVER_PID"
if ! wait "$SERVER_PID"; then
    echo "conformance: server did not exit 0 on SIGTERM" >&2
    SERVER_PID=""
    exit 1
fi
SERVER_PID=""
echo "conformance: OK"

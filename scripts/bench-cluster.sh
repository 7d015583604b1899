#!/usr/bin/env bash
# Throughput through twemproxy (nutcracker) with 1, 2 and 3 backends, with
# memcached's load generator memcaslap (libmemcached-tools). Not run by CI.
#
#   scripts/bench-cluster.sh                 # kvstore-server backends
#   BACKEND=memcached scripts/bench-cluster.sh   # real memcached backends
#
# For each N: N backends, nutcracker in front (the deploy/nutcracker.yml
# settings, hash md5 / ketama), memcaslap through the proxy; plus one run
# straight at a single backend, without the proxy, for comparison. Prints
# one line per run and a Markdown table at the end.
# Settings: DURATION (10s), THREADS (2), CONNS (64), VALUE_BYTES (100),
# BACKEND (kvstore|memcached), POOL_SERVER_CONNECTIONS (nutcracker's
# server_connections, 1 as in deploy/nutcracker.yml). Loopback only; everything started here is
# stopped by its PID.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
VALUE_BYTES=${VALUE_BYTES:-100}
BACKEND=${BACKEND:-kvstore}
# shellcheck source=scripts/cluster-common.sh
. scripts/cluster-common.sh

need_package nutcracker nutcracker
need_package memcaslap libmemcached-tools
[ "$BACKEND" = memcached ] && need_package memcached memcached
build_binaries
# memcaslap's keys start with eight 0x10 bytes, which docs/PROTOCOL.md's key rule
# (the server's default) refuses; --lenient-keys accepts them as memcached
# does. Without it every request is a CLIENT_ERROR and nothing is measured.
KVSTORE_ARGS=(--durability periodic --lenient-keys)
# 64-byte keys, VALUE_BYTES values, 10% set / 90% get; with a window of 1k
# keys per connection the kvstore servers create a modest number of files.
cat >"$WORK/memcaslap.cfg" <<CFG
key
64 64 1
value
$VALUE_BYTES $VALUE_BYTES 1
cmd
0 0.1
1 0.9
CFG

# start_backends N: sets BACKENDS (addresses) and BACKEND_PIDS.
start_backends() {
    BACKENDS=()
    BACKEND_PIDS=()
    local i port
    for ((i = 0; i < $1; i++)); do
        if [ "$BACKEND" = memcached ]; then
            port=$("$CHECK" free-ports 1)
            start_memcached "$port"
            BACKENDS+=("127.0.0.1:$port")
        else
            rm -rf "$WORK/kv-$i"
            mkdir -p "$WORK/kv-$i"
            start_kvstore "kv-$i" "$WORK/kv-$i" 0
            BACKENDS+=("$STARTED_ADDR")
        fi
        BACKEND_PIDS+=("$STARTED_PID")
    done
}

stop_backends() {
    local pid
    for pid in "${BACKEND_PIDS[@]}"; do
        stop "$pid"
    done
}

# cpu_ticks PID...: user+system clock ticks used so far by those processes.
cpu_ticks() {
    local pid total=0 fields
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that
        # ends the command name.
        fields=$(sed 's/.*) //' "/proc/$pid/stat")
        total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
    done
    echo "$total"
}

# measure LABEL ADDR PROXY_PID: runs memcaslap at ADDR, prints and records
# its ops/s and the CPU the proxy (if any) and the backends used, in cores.
RESULTS=()
measure() {
    local label=$1 addr=$2 proxy_pid=$3 out tps misses gets start_proxy start_backends
    local ticks proxy_cores backend_cores secs
    secs=${DURATION%s}
    ticks=$(getconf CLK_TCK)
    start_proxy=0
    [ -n "$proxy_pid" ] && start_proxy=$(cpu_ticks "$proxy_pid")
    start_backends=$(cpu_ticks "${BACKEND_PIDS[@]}")
    out=$(memcaslap -s "$addr" -F "$WORK/memcaslap.cfg" -w 1k -T "$THREADS" -c "$CONNS" \
        -t "$DURATION" -X "$VALUE_BYTES" 2>&1) || { echo "$out" >&2; return 1; }
    # A run whose requests were refused measured nothing.
    if grep -q 'ERROR' <<<"$out" || ! grep -q '^cmd_get: [1-9]' <<<"$out"; then
        echo "$label: memcaslap saw errors or no gets:" >&2
        grep -m 5 'ERROR' <<<"$out" >&2 || true
        grep '^cmd_' <<<"$out" >&2 || true
        return 1
    fi
    proxy_cores=-
    [ -n "$proxy_pid" ] &&
        proxy_cores=$(awk -v a="$start_proxy" -v b="$(cpu_ticks "$proxy_pid")" -v t="$ticks" -v s="$secs" \
            'BEGIN { printf "%.2f", (b - a) / t / s }')
    backend_cores=$(awk -v a="$start_backends" -v b="$(cpu_ticks "${BACKEND_PIDS[@]}")" -v t="$ticks" -v s="$secs" \
        'BEGIN { printf "%.2f", (b - a) / t / s }')
    tps=$(sed -n 's/.*TPS: \([0-9]*\).*/\1/p' <<<"$out" | tail -n 1)
    [ -n "$tps" ] || { echo "no TPS in memcaslap output: $out" >&2; return 1; }
    misses=$(sed -n 's/^get_misses: //p' <<<"$out" | tail -n 1)
    gets=$(sed -n 's/^cmd_get: //p' <<<"$out" | tail -n 1)
    echo "$label: $tps ops/s (cmd_get $gets, get_misses $misses; CPU in cores: proxy $proxy_cores, backends $backend_cores)"
    RESULTS+=("| $label | $tps | $proxy_cores | $backend_cores |")
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== $BACKEND backends, server_connections: ${POOL_SERVER_CONNECTIONS:-1}; memcaslap -T $THREADS -c $CONNS -t $DURATION -w 1k, 64-byte keys, $VALUE_BYTES-byte values (90% get, 10% set); $(nproc) cores"
start_backends 1
measure "1 $BACKEND, direct (no proxy)" "${BACKENDS[0]}" ""
stop_backends

for n in 1 2 3; do
    start_backends "$n"
    lines=()
    for addr in "${BACKENDS[@]}"; do
        lines+=("$addr:1")
    done
    proxy=127.0.0.1:$("$CHECK" free-ports 1)
    pool bench "$proxy" md5 30000 "${lines[@]}" >"$WORK/nutcracker-$n.yml"
    start_nutcracker "proxy-$n" "$WORK/nutcracker-$n.yml"
    proxy_pid=$STARTED_PID
    measure "$n $BACKEND behind nutcracker" "$proxy" "$proxy_pid"
    stop "$proxy_pid"
    stop_backends
done

echo
echo "load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| setup | ops/s | proxy CPU (cores) | backends CPU (cores) |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${RESULTS[@]}"

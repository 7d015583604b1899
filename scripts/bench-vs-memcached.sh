#!/usr/bin/env bash
# kvstore-server's memcached dialect against a real memcached, side by side,
# with memcached's own load generator (memcaslap, from libmemcached-tools):
# 90% get / 10% set, 100-byte values, 2 load threads, 10 s per run, at 64,
# 1 and 1,000 connections. Prints the median ops/s of RUNS runs for each
# server and the ratio kvstore / memcached.
#
#   scripts/bench-vs-memcached.sh            # RUNS=3 DURATION=10s
#   RUNS=5 DURATION=20s CONNS="64" scripts/bench-vs-memcached.sh
#   DATA_PARENT=/dev/shm scripts/bench-vs-memcached.sh   # store on tmpfs:
#       isolates the network path from the file system's create cost
#
# kvstore-server runs with --durability periodic (the default, 1 s). Both
# servers and the load generator share this machine's cores: compare the
# ratio, not the absolute figures. memcaslap never overwrites unless told
# to (-o), so every set is a new key and a new file in the store: a full run
# (3 connection counts x 3 runs) creates ~200k files, which the script
# deletes at the end (that takes a while on this disk). OVERWRITE=0.9 passes
# -o 0.9 (90% of sets overwrite a key already set) for a cache-like mix with
# far fewer files. kvstore-server runs with --lenient-keys: memcaslap puts eight
# 0x10 bytes at the start of every key, which docs/PROTOCOL.md (and so the default
# server) refuses as control bytes; memcached itself accepts them.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-"64 1 1000"}
VALUE_BYTES=${VALUE_BYTES:-100}
OVERWRITE=${OVERWRITE:-}
DATA_PARENT=${DATA_PARENT:-}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
if ! command -v memcaslap >/dev/null 2>&1 || ! command -v memcached >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmemcached-tools memcached >/dev/null
fi

cargo build --release --quiet -p kvstore-net --bin kvstore-server
BIN=$PWD/target/release/kvstore-server

mkdir -p target
WORK=$(mktemp -d -p "$PWD/target" bench-vs-memcached.XXXXXX)
DATA=$(mktemp -d -p "${DATA_PARENT:-$PWD/target}" bench-data.XXXXXX)
MC_PID=""
KV_PID=""
stop() {
    local pid=$1
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
cleanup() {
    stop "$MC_PID"
    stop "$KV_PID"
    rm -rf "$WORK" "$DATA"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cat >"$WORK/config" <<CFG
key
64 64 1
value
$VALUE_BYTES $VALUE_BYTES 1
cmd
0 0.1
1 0.9
CFG

MC_PORT=$(free_port)
USER_ARGS=()
if [ "$(id -u)" -eq 0 ]; then USER_ARGS=(-u root); fi
memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -t 4 -m 1024 -c 4096 "${USER_ARGS[@]}" &
MC_PID=$!

# Created first, so the wait below never reads a file not there yet.
: >"$WORK/kv.out"
"$BIN" --dir "$DATA/data" --port 0 --memcached-port 0 --durability periodic --lenient-keys \
    --max-connections 8192 >"$WORK/kv.out" 2>"$WORK/kv.err" &
KV_PID=$!
KV_PORT=""
for _ in $(seq 1 200); do
    KV_PORT=$(sed -n 's/^listening on .*:\([0-9][0-9]*\) (memcached)$/\1/p' "$WORK/kv.out")
    [ -n "$KV_PORT" ] && break
    sleep 0.05
done
[ -n "$KV_PORT" ] || { echo "kvstore-server did not start:" >&2; cat "$WORK/kv.err" >&2; exit 1; }
for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MC_PORT") 2>/dev/null && break
    sleep 0.05
done

# One memcaslap run; prints its ops/s (TPS).
load() {
    local port=$1 conns=$2 threads=2 window
    [ "$conns" -lt 2 ] && threads=1
    window=1k
    memcaslap -s "127.0.0.1:$port" -F "$WORK/config" -T "$threads" -c "$conns" \
        -t "$DURATION" -X "$VALUE_BYTES" -w "$window" ${OVERWRITE:+-o "$OVERWRITE"} 2>&1 \
        | sed -n 's/.*TPS: *\([0-9][0-9]*\).*/\1/p' | tail -1
}

median() {
    sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else print a[int((NR+1)/2)]}'
}

printf '%-12s %14s %14s %8s\n' connections memcached kvstore ratio
for conns in $CONNS; do
    : >"$WORK/mc.$conns"
    : >"$WORK/kv.$conns"
    for run in $(seq 1 "$RUNS"); do
        # Alternate which server goes first, so neither always gets the
        # warmer machine.
        if [ $((run % 2)) -eq 1 ]; then
            load "$MC_PORT" "$conns" >>"$WORK/mc.$conns"
            load "$KV_PORT" "$conns" >>"$WORK/kv.$conns"
        else
            load "$KV_PORT" "$conns" >>"$WORK/kv.$conns"
            load "$MC_PORT" "$conns" >>"$WORK/mc.$conns"
        fi
    done
    mc=$(median <"$WORK/mc.$conns")
    kv=$(median <"$WORK/kv.$conns")
    ratio=$(awk -v a="$kv" -v b="$mc" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-12s %14s %14s %8s   (runs: mc %s / kv %s)\n' "$conns" "$mc" "$kv" "$ratio" \
        "$(paste -sd, "$WORK/mc.$conns")" "$(paste -sd, "$WORK/kv.$conns")"
done

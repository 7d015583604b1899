#!/usr/bin/env bash
# What each durability mode costs over the wire, kvstore-server against
# Redis, side by side in one run: set-only load (and a 90% get / 10% set
# mix) from 64 connections, one request in flight each, 100-byte values,
# sets and gets spread uniformly over 100,000 keys set beforehand.
#
#   scripts/bench-durability.sh                     # RUNS=3 DURATION=10
#   RUNS=5 DURATION=20 CONNS=64 KEYS=100000 VALUE_BYTES=100 scripts/bench-durability.sh
#   DATA_PARENT=/dev/shm scripts/bench-durability.sh  # data on tmpfs
#
# Servers, each started fresh on a fresh data directory under target/ (the
# project's ext4; DATA_PARENT overrides), prefilled, let settle (kvstore
# applies a journaled prefill behind it: the script waits until its pending
# table is empty, then SETTLE_SECONDS=2 for every server), measured,
# stopped:
#   kvstore-server --durability never | periodic | always (memcached dialect)
#   redis-server --appendonly yes --appendfsync always | everysec
# Loads: the wire_load example (memcached dialect for kvstore, RESP for
# Redis: one load generator for both), and for Redis also its own
# redis-benchmark (-t set -P 1), sized to run about DURATION seconds. The order of
# the servers rotates from round to round; the table gives medians over
# RUNS rounds, the CPU each side used (cores: CPU seconds per second, from
# /proc/PID/stat for the server and bash's `time` for the load generator),
# and the ratios. Both servers and the load generator share this machine's
# cores: compare ratios, not absolute figures.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
KEYS=${KEYS:-100000}
VALUE_BYTES=${VALUE_BYTES:-100}
DATA_PARENT=${DATA_PARENT:-$ROOT/target}
SETTLE_SECONDS=${SETTLE_SECONDS:-2}
for knob in DURATION RUNS CONNS KEYS VALUE_BYTES SETTLE_SECONDS; do
    if ! [[ ${!knob} =~ ^[0-9]+$ ]] || [ "${!knob}" -eq 0 ]; then
        echo "bench-durability: $knob must be a positive integer, not '${!knob}'" >&2
        exit 2
    fi
done

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench-durability: installing ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian package starts a redis-server service on 6379; this script
# starts its own on a free port and never touches that one.

cargo build --release --quiet -p kvstore-net --bin kvstore-server --example wire_load
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER=$TARGET/release/kvstore-server
LOAD=$TARGET/release/examples/wire_load

mkdir -p "$ROOT/target" "$DATA_PARENT"
WORK=$(mktemp -d -p "$ROOT/target" bench-durability.XXXXXX)
PID=""
DATA=""
stop_server() {
    if [ -n "$PID" ]; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    PID=""
    if [ -n "$DATA" ]; then
        rm -rf "$DATA"
    fi
    DATA=""
}
cleanup() {
    local status=$?
    stop_server
    if [ "$status" -ne 0 ]; then
        echo "bench-durability: FAILED (logs in $WORK)" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for FILE PATTERN: until FILE holds a line matching PATTERN (sed -n
# script printing what is wanted) or 30 s pass; prints the match.
wait_for() {
    local file=$1 pattern=$2 deadline=$((SECONDS + 30)) found=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        found=$(sed -n "$pattern" "$file" | head -1)
        if [ -n "$found" ]; then
            echo "$found"
            return 0
        fi
        if ! kill -0 "$PID" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    echo "bench-durability: server did not start; its log:" >&2
    cat "$file" "$file.err" >&2 2>/dev/null || true
    return 1
}

# start SERVER: one of kv-never kv-periodic kv-always redis-always
# redis-everysec, on a fresh data directory; sets PID, PORT, PROTOCOL.
start() {
    local name=$1 log=$WORK/$1.log
    DATA=$(mktemp -d -p "$DATA_PARENT" bench-durability-data.XXXXXX)
    : >"$log"
    case $name in
        kv-*)
            PROTOCOL=memcached
            "$SERVER" --dir "$DATA/store" --port 0 --memcached-port 0 \
                --durability "${name#kv-}" >"$log" 2>"$log.err" &
            PID=$!
            PORT=$(wait_for "$log" 's/^listening on .*:\([0-9][0-9]*\) (memcached)$/\1/p')
            ;;
        redis-*)
            PROTOCOL=resp
            PORT=$(free_port)
            redis-server --port "$PORT" --bind 127.0.0.1 --dir "$DATA" --save "" \
                --appendonly yes --appendfsync "${name#redis-}" --daemonize no \
                --logfile "" >"$log" 2>"$log.err" &
            PID=$!
            wait_for "$log" '/Ready to accept connections/p' >/dev/null
            ;;
    esac
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID: user + system time of the whole process, in clock ticks
# (the fields after the command name, which may hold spaces).
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# measure LABEL COMMAND...: runs one load against the server $PID and
# appends "ops/s p50_us p99_us server_cores loadgen_cores" to $WORK/LABEL.
measure() {
    local label=$1 before after real user sys ops p50 p99 status=0
    shift
    before=$(cpu_ticks "$PID")
    local TIMEFORMAT='%R %U %S'
    { time "$@" >"$WORK/out" 2>"$WORK/err"; } 2>"$WORK/time" || status=$?
    after=$(cpu_ticks "$PID")
    if [ "$status" -ne 0 ]; then
        echo "bench-durability: $label failed ($status): $*" >&2
        cat "$WORK/out" "$WORK/err" >&2
        exit 1
    fi
    read -r real user sys <"$WORK/time"
    case $1 in
        wire_load)
            read -r ops p50 p99 < <(awk '$1 == "ops/s" { print $2, $4, $6 }' "$WORK/out") || true
            ;;
        *) # redis-benchmark --csv: "SET","rps","avg","min","p50","p95","p99","max" (ms)
            read -r ops p50 p99 < <(tr -d '"' <"$WORK/out" | awk -F, '$1 == "SET" {
                printf "%.0f %.0f %.0f\n", $2, $5 * 1000, $7 * 1000 }') || true
            ;;
    esac
    if [ -z "${ops:-}" ]; then
        echo "bench-durability: $label printed no figures: $*" >&2
        cat "$WORK/out" "$WORK/err" >&2
        exit 1
    fi
    awk -v o="$ops" -v a="$p50" -v b="$p99" -v t0="$before" -v t1="$after" -v hz="$CLK_TCK" \
        -v r="$real" -v u="$user" -v s="$sys" \
        'BEGIN { printf "%s %s %s %.2f %.2f\n", o, a, b, (t1 - t0) / hz / r, (u + s) / r }' \
        >>"$WORK/$label"
    echo "  $label: $(tail -1 "$WORK/$label")" >&2
}

wire_load() { # ARGS...: the load generator against the server just started
    "$LOAD" --addr "127.0.0.1:$PORT" --protocol "$PROTOCOL" --connections "$CONNS" \
        --keys "$KEYS" --value-bytes "$VALUE_BYTES" "$@"
}

# stat NAME: the value of `STAT NAME` from the kvstore server just started.
stat() {
    local value
    exec 3<>"/dev/tcp/127.0.0.1/$PORT"
    printf 'stats\r\nquit\r\n' >&3
    value=$(sed -n "s/^STAT $1 \([0-9]*\).*/\1/p" <&3)
    exec 3<&-
    echo "$value"
}

# settle SERVER: lets the work the prefill left behind finish before the
# measurement: kvstore in `periodic` and `always` applies the journaled
# prefill (100,000 file creations) to the value files in the background,
# so it waits until the pending table is empty (at most 120 s); then every
# server gets SETTLE_SECONDS more for the last checkpoint or writeback.
settle() {
    local deadline=$((SECONDS + 120))
    case $1 in
        kv-periodic | kv-always)
            while [ "$(stat pending_bytes)" != 0 ]; do
                if [ "$SECONDS" -ge "$deadline" ]; then
                    echo "bench-durability: $1 did not apply its prefill in 120 s" >&2
                    exit 1
                fi
                sleep 0.2
            done
            ;;
    esac
    sleep "$SETTLE_SECONDS"
}

# bench SERVER: start it, prefill every key, let it settle, measure its
# loads, stop it.
bench() {
    local name=$1 rate n
    start "$name"
    wire_load --prefill --seconds 0 >/dev/null 2>"$WORK/prefill.err" || {
        cat "$WORK/prefill.err" >&2
        exit 1
    }
    echo "  $name: $(grep prefilled "$WORK/prefill.err")" >&2
    settle "$name"
    measure "$name-set" wire_load --require-hits --seconds "$DURATION" --set-ratio 1.0
    case $name in
        kv-periodic | redis-everysec)
            measure "$name-mix" wire_load --require-hits --seconds "$DURATION" --set-ratio 0.1
            ;;
    esac
    case $name in
        redis-*)
            # Last on this server: its values are not the ones wire_load
            # checks. Sized from wire_load's rate to run about DURATION.
            rate=$(tail -1 "$WORK/$name-set" | cut -d' ' -f1)
            n=$((rate * DURATION))
            [ "$n" -ge 10000 ] || n=10000
            measure "$name-set-rb" redis-benchmark -h 127.0.0.1 -p "$PORT" -t set \
                -c "$CONNS" -d "$VALUE_BYTES" -r "$KEYS" -n "$n" -P 1 --csv
            ;;
    esac
    stop_server
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
SERVERS=(kv-never kv-periodic kv-always redis-always redis-everysec)
for run in $(seq 1 "$RUNS"); do
    # Rotate the order, so no server always meets the same disk state or
    # goes first.
    shift_by=$(((run - 1) % ${#SERVERS[@]}))
    order=("${SERVERS[@]:shift_by}" "${SERVERS[@]:0:shift_by}")
    echo "round $run/$RUNS: ${order[*]}" >&2
    for name in "${order[@]}"; do
        bench "$name"
    done
done

median() { # FILE COLUMN
    awk -v c="$2" '{ print $c }' "$1" | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print a[int((NR + 1) / 2)] }'
}
runs() { # FILE: the ops/s of every round
    cut -d' ' -f1 "$1" | paste -sd, -
}

echo
echo "$CONNS connections, $VALUE_BYTES B values, $KEYS keys prefilled, ${DURATION} s per load, medians of $RUNS rounds"
echo "load average before / after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server, loadgen: CPU cores used (CPU seconds per second of the load)"
printf '%-44s %9s %8s %8s %8s %8s  %s\n' load ops/s p50_us p99_us server loadgen "rounds (ops/s)"
row() { # LABEL TEXT
    local f=$WORK/$1
    printf '%-44s %9s %8s %8s %8s %8s  %s\n' "$2" "$(median "$f" 1)" "$(median "$f" 2)" \
        "$(median "$f" 3)" "$(median "$f" 4)" "$(median "$f" 5)" "$(runs "$f")"
}
row kv-never-set "kvstore never, set, wire_load"
row kv-periodic-set "kvstore periodic, set, wire_load"
row kv-always-set "kvstore always, set, wire_load"
row redis-always-set "redis always, set, wire_load"
row redis-always-set-rb "redis always, set, redis-benchmark"
row redis-everysec-set "redis everysec, set, wire_load"
row redis-everysec-set-rb "redis everysec, set, redis-benchmark"
row kv-periodic-mix "kvstore periodic, 90/10 mix, wire_load"
row redis-everysec-mix "redis everysec, 90/10 mix, wire_load"

echo
# ratio TEXT A B: median ops/s of A over B's, and the lowest and highest
# ratio within one round (A and B measured a few minutes apart).
ratio() {
    local per_round
    per_round=$(paste -d' ' "$WORK/$2" "$WORK/$3" |
        awk '$6 > 0 { print $1 / $6 }' | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 }
            END { if (NR > 0) printf "%.2f-%.2f", lo, hi }')
    awk -v t="$1" -v a="$(median "$WORK/$2" 1)" -v b="$(median "$WORK/$3" 1)" -v r="$per_round" \
        'BEGIN { printf "%-56s %5s   (within a round: %s)\n", t, (b > 0 ? sprintf("%.2f", a / b) : "n/a"), r }'
}
ratio "set: kvstore periodic / kvstore never" kv-periodic-set kv-never-set
ratio "set: kvstore always / redis always (both wire_load)" kv-always-set redis-always-set
ratio "set: kvstore always / redis always (redis-benchmark)" kv-always-set redis-always-set-rb
ratio "set: kvstore periodic / redis everysec (both wire_load)" kv-periodic-set redis-everysec-set
ratio "mix: kvstore periodic / redis everysec (both wire_load)" kv-periodic-mix redis-everysec-mix

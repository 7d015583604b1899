#!/usr/bin/env bash
# Scale-out test: twemproxy (nutcracker) in front of 3 servers, ketama routing.
#
# Part 1, compatibility: nutcracker in front of 3 real memcached servers.
#   Keys written through the proxy are looked up on each memcached directly;
#   kvstore's continuum (kvstore-net/src/cluster.rs) must predict the server
#   of every key, for hash md5 and fnv1a_64, before and after the proxy
#   ejects a killed server.
# Part 1b: libmemcached's weighted ketama (MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED,
#   called through Python ctypes) must route 10,000 keys as the continuum
#   does, for the deploy server list and for a weighted one.
# Part 2, kvstore: deploy/nutcracker.yml (on free ports) in front of 3
#   kvstore-server processes. 10,000 keys through the proxy, each server's
#   share within 20% of even, everything read back through the proxy and
#   through kvstore's own Cluster client, one server SIGKILLed (the proxy
#   ejects it, the others' keys stay readable), restarted on its directory
#   and port: the proxy takes it back and its keys are there again.
#
# Loopback only; ports are picked free at run time; every process started
# here is stopped by its PID on exit. Needs nutcracker, memcached, python3
# and libmemcached11 (each installed with apt-get when missing) and the Rust
# toolchain.
# CLUSTER_TEST_KEYS (default 10000) sets the number of keys.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
KEYS=${CLUSTER_TEST_KEYS:-10000}
# shellcheck source=scripts/cluster-common.sh
. scripts/cluster-common.sh

need_package nutcracker nutcracker
need_package memcached memcached

echo "== building release binaries"
build_binaries

echo "== part 1: kvstore's continuum against nutcracker + 3 real memcached"
mapfile -t MC_PORTS < <("$CHECK" free-ports 3)
mapfile -t PX_PORTS < <("$CHECK" free-ports 2)
MC_PIDS=()
for port in "${MC_PORTS[@]}"; do
    start_memcached "$port"
    MC_PIDS+=("$STARTED_PID")
done
MD5_SERVERS=()
FNV_SERVERS=()
names=(mc-a mc-b mc-c)
for i in 0 1 2; do
    MD5_SERVERS+=("127.0.0.1:${MC_PORTS[$i]}:1")
    FNV_SERVERS+=("127.0.0.1:${MC_PORTS[$i]}:1 ${names[$i]}")
done
# Two pools over the same memcached servers: md5 with default server names,
# fnv1a_64 (twemproxy's default hash) with explicit names.
{
    pool md5 "127.0.0.1:${PX_PORTS[0]}" md5 60000 "${MD5_SERVERS[@]}"
    pool fnv "127.0.0.1:${PX_PORTS[1]}" fnv1a_64 60000 "${FNV_SERVERS[@]}"
} >"$WORK/nutcracker-memcached.yml"
start_nutcracker mcproxy "$WORK/nutcracker-memcached.yml"
MCPROXY_PID=$STARTED_PID
MD5_PROXY=127.0.0.1:${PX_PORTS[0]}
FNV_PROXY=127.0.0.1:${PX_PORTS[1]}
mapfile -d '' -t MD5_ARGS < <(server_args "${MD5_SERVERS[@]}")
mapfile -d '' -t FNV_ARGS < <(server_args "${FNV_SERVERS[@]}")
MD5=("${MD5_ARGS[@]}" --hash md5)
FNV=("${FNV_ARGS[@]}" --hash fnv1a_64)

"$CHECK" write --proxy "$MD5_PROXY" --prefix m: --count "$KEYS"
"$CHECK" locate "${MD5[@]}" --prefix m: --count "$KEYS"
"$CHECK" write --proxy "$FNV_PROXY" --prefix f: --count "$KEYS"
"$CHECK" locate "${FNV[@]}" --prefix f: --count "$KEYS"
# Control: the check must fail when the prediction is wrong.
if "$CHECK" locate "${MD5_ARGS[@]}" --hash fnv1a_64 --prefix m: --count "$KEYS" >/dev/null 2>&1; then
    echo "the location check passed with the wrong hash: it cannot fail" >&2
    exit 1
fi

echo "-- killing memcached 1 (SIGKILL, pid ${MC_PIDS[1]}): the proxy must eject it"
# Killed and reaped in one redirected group: no job notice from bash.
{ kill -KILL "${MC_PIDS[1]}"; wait "${MC_PIDS[1]}"; } 2>/dev/null || true
"$CHECK" await-ejection --proxy "$MD5_PROXY" "${MD5[@]}" --dead 1 --prefix m: --count "$KEYS"
"$CHECK" await-ejection --proxy "$FNV_PROXY" "${FNV[@]}" --dead 1 --prefix f: --count "$KEYS"
"$CHECK" read --proxy "$MD5_PROXY" "${MD5[@]}" --dead 1 --prefix m: --count "$KEYS"
# Keys written now go to the continuum without server 1.
"$CHECK" write --proxy "$MD5_PROXY" --prefix m2: --count "$KEYS"
"$CHECK" locate "${MD5[@]}" --dead 1 --prefix m2: --count "$KEYS"
"$CHECK" write --proxy "$FNV_PROXY" --prefix f2: --count "$KEYS"
"$CHECK" locate "${FNV[@]}" --dead 1 --prefix f2: --count "$KEYS"
stop "$MCPROXY_PID"
stop "${MC_PIDS[0]}"
stop "${MC_PIDS[2]}"
echo "part 1 passed: nutcracker and kvstore's continuum agree on every key"

echo "== part 1b: libmemcached's own weighted ketama (through Python ctypes) routes like the continuum"
need_package python3 python3
if ! ldconfig -p | grep -q 'libmemcached\.so\.11'; then
    install_package libmemcached11
fi
# Routing only: libmemcached computes the server index without connecting,
# so these addresses are names, never contacted. The first list is the
# deploy one (port 11211 is named without its port), the second is weighted.
for list in "127.0.0.1:11211:1 127.0.0.1:11212:1 127.0.0.1:11213:1" \
    "127.0.0.2:11211:1 127.0.0.3:11211:2 127.0.0.4:22122:5"; do
    read -r -a entries <<<"$list"
    mapfile -d '' -t ROUTE_ARGS < <(server_args "${entries[@]}")
    "$CHECK" route "${ROUTE_ARGS[@]}" --hash md5 --prefix l: --count "$KEYS" |
        python3 -c '
import ctypes, sys
lib = ctypes.CDLL("libmemcached.so.11")
lib.memcached_create.restype = ctypes.c_void_p
lib.memcached_create.argtypes = [ctypes.c_void_p]
lib.memcached_server_add_with_weight.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint16, ctypes.c_uint32]
lib.memcached_behavior_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
lib.memcached_generate_hash.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
lib.memcached_generate_hash.restype = ctypes.c_uint32
lib.memcached_free.argtypes = [ctypes.c_void_p]
MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED = 16
memc = lib.memcached_create(None)
for entry in sys.argv[1:]:
    host, port, weight = entry.split(":")
    assert lib.memcached_server_add_with_weight(memc, host.encode(), int(port), int(weight)) == 0
assert lib.memcached_behavior_set(memc, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1) == 0
agree = total = 0
shares = [0] * (len(sys.argv) - 1)
for line in sys.stdin.buffer:
    index, key = line.rstrip(b"\n").split(b"\t", 1)
    got = lib.memcached_generate_hash(memc, key, len(key))
    total += 1
    shares[got] += 1
    if got == int(index):
        agree += 1
    elif total - agree <= 5:
        print("  mismatch: %r: kvstore %s, libmemcached %d" % (key, index.decode(), got))
lib.memcached_free(memc)
print("libmemcached %s: %d/%d keys on the server kvstore predicts (shares %s)" % (" ".join(sys.argv[1:]), agree, total, shares))
sys.exit(0 if total > 0 and agree == total else 1)
' "${entries[@]}"
done

if [ "${CLUSTER_TEST_PART:-all}" = memcached ]; then
    echo "cluster-test: 1 passed, 0 failed (part 2 not asked for)"
    exit 0
fi

echo "== part 2: deploy/nutcracker.yml in front of 3 kvstore-server processes"
KV_PIDS=()
KV_ADDRS=()
for i in 0 1 2; do
    mkdir -p "$WORK/kv-$i"
    start_kvstore "kv-$i" "$WORK/kv-$i" 0
    KV_PIDS+=("$STARTED_PID")
    KV_ADDRS+=("$STARTED_ADDR")
    echo "kvstore-server $i: pid $STARTED_PID, memcached dialect on $STARTED_ADDR"
done
PROXY=127.0.0.1:$("$CHECK" free-ports 1)
# The deploy file with free ports, and a 1 s retry so the restart below is
# picked up quickly (deploy: 30 s).
sed -e "s/127\.0\.0\.1:22121/$PROXY/" \
    -e "s/127\.0\.0\.1:11211:1/${KV_ADDRS[0]}:1/" \
    -e "s/127\.0\.0\.1:11212:1/${KV_ADDRS[1]}:1/" \
    -e "s/127\.0\.0\.1:11213:1/${KV_ADDRS[2]}:1/" \
    -e "s/server_retry_timeout: 30000/server_retry_timeout: 1000/" \
    deploy/nutcracker.yml >"$WORK/nutcracker-kvstore.yml"
for addr in "${KV_ADDRS[@]}"; do
    grep -q "$addr:1" "$WORK/nutcracker-kvstore.yml" || { echo "templating deploy/nutcracker.yml failed" >&2; exit 1; }
done
start_nutcracker kvproxy "$WORK/nutcracker-kvstore.yml"
KV_SERVERS=()
for addr in "${KV_ADDRS[@]}"; do
    KV_SERVERS+=("$addr:1")
done
mapfile -d '' -t KV_ARGS < <(server_args "${KV_SERVERS[@]}")
KV=("${KV_ARGS[@]}" --hash md5)

"$CHECK" write --proxy "$PROXY" --prefix k: --count "$KEYS"
"$CHECK" locate "${KV[@]}" --prefix k: --count "$KEYS" --max-skew 0.2
"$CHECK" read --proxy "$PROXY" "${KV[@]}" --prefix k: --count "$KEYS"
"$CHECK" cluster-read "${KV[@]}" --prefix k: --count "$KEYS"

echo "-- killing kvstore-server 1 (SIGKILL, pid ${KV_PIDS[1]})"
# Killed and reaped in one redirected group: no job notice from bash.
{ kill -KILL "${KV_PIDS[1]}"; wait "${KV_PIDS[1]}"; } 2>/dev/null || true
"$CHECK" await-ejection --proxy "$PROXY" "${KV[@]}" --dead 1 --prefix k: --count "$KEYS"
"$CHECK" read --proxy "$PROXY" "${KV[@]}" --dead 1 --prefix k: --count "$KEYS"
"$CHECK" cluster-read "${KV[@]}" --dead 1 --prefix k: --count "$KEYS"

echo "-- restarting kvstore-server 1 on its directory and port"
port1=${KV_ADDRS[1]##*:}
start_kvstore kv-1-again "$WORK/kv-1" "$port1"
echo "kvstore-server 1 again: pid $STARTED_PID on $STARTED_ADDR"
# The proxy retries it after server_retry_timeout: wait until its keys read
# back through the proxy, then check every key is where it was.
"$CHECK" read --proxy "$PROXY" "${KV[@]}" --only 1 --retry-ms 15000 --prefix k: --count "$KEYS"
"$CHECK" locate "${KV[@]}" --prefix k: --count "$KEYS" --max-skew 0.2
"$CHECK" read --proxy "$PROXY" "${KV[@]}" --prefix k: --count "$KEYS"
"$CHECK" cluster-read "${KV[@]}" --prefix k: --count "$KEYS"
echo "part 2 passed: 3 kvstore servers behind nutcracker, one killed and restarted"
echo "cluster-test: 2 passed, 0 failed"

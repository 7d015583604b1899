# Shared by scripts/cluster-test.sh and scripts/bench-cluster.sh (sourced,
# not run). Expects ROOT; sets WORK, PIDS and an EXIT trap that stops every
# process started here by its PID.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvstore-cluster.XXXXXX")
PIDS=()
KEEP_WORK_ON_SUCCESS=${KEEP_WORK_ON_SUCCESS:-0}

cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo "$(basename "$0"): FAILED (logs in $WORK)" >&2
        for log in "$WORK"/*.log; do
            [ -s "$log" ] || continue
            echo "--- $log (last lines)" >&2
            tail -n 20 "$log" >&2
        done
    elif [ "$KEEP_WORK_ON_SUCCESS" = 0 ]; then
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# install_package PACKAGE: apt-get install, as root or through sudo.
install_package() {
    echo "installing $1"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# need_package COMMAND PACKAGE: installs the Debian package when COMMAND is
# missing.
need_package() {
    if command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; then
        return 0
    fi
    install_package "$2"
}

tool() { # COMMAND: its path, /usr/sbin included
    command -v "$1" 2>/dev/null || echo "/usr/sbin/$1"
}

# build_binaries: release kvstore-server and the cluster_check example.
build_binaries() {
    cargo build --release --quiet -p kvstore-net --bin kvstore-server --example cluster_check
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    CHECK=$target/release/examples/cluster_check
    SERVER=$target/release/kvstore-server
}

# start_memcached PORT: real memcached on 127.0.0.1:PORT; sets STARTED_PID.
start_memcached() {
    local user=()
    [ "$(id -u)" -eq 0 ] && user=(-u nobody)
    "$(tool memcached)" "${user[@]}" -l 127.0.0.1 -p "$1" -U 0 -t "${MEMCACHED_THREADS:-2}" -m 256 \
        >"$WORK/memcached-$1.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    "$CHECK" wait "127.0.0.1:$1"
}

# start_kvstore NAME DIR PORT: kvstore-server on DIR, memcached dialect on
# PORT (0: the OS picks), seed dialect on a port the OS picks. Waits for its
# "listening on ADDR (memcached)" line; sets STARTED_PID and STARTED_ADDR.
start_kvstore() {
    local name=$1 dir=$2 port=$3 deadline=$((SECONDS + 30))
    # The file exists before the server starts, so the wait below never
    # reads a file the background shell has not created yet.
    : >"$WORK/$name.out"
    "$SERVER" --dir "$dir" --port 0 --memcached-port "$port" "${KVSTORE_ARGS[@]}" \
        >"$WORK/$name.out" 2>>"$WORK/$name.log" &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    STARTED_ADDR=
    while [ -z "$STARTED_ADDR" ]; do
        STARTED_ADDR=$(sed -n 's/^listening on \(.*\) (memcached)$/\1/p' "$WORK/$name.out")
        [ -n "$STARTED_ADDR" ] && break
        if ! kill -0 "$STARTED_PID" 2>/dev/null; then
            echo "$name exited before listening" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "$name not listening after 30 s" >&2
            return 1
        fi
        sleep 0.05
    done
}
KVSTORE_ARGS=()

# pool NAME LISTEN HASH RETRY_MS SERVER_LINE...: one nutcracker pool as YAML,
# ejecting a server at its first failure, with POOL_SERVER_CONNECTIONS
# (default 1) connections to each server.
pool() {
    local name=$1 listen=$2 hash=$3 retry=$4
    shift 4
    cat <<YAML
$name:
  listen: $listen
  hash: $hash
  distribution: ketama
  timeout: 2000
  preconnect: true
  server_connections: ${POOL_SERVER_CONNECTIONS:-1}
  auto_eject_hosts: true
  server_failure_limit: 1
  server_retry_timeout: $retry
  servers:
YAML
    for line in "$@"; do
        echo "   - $line"
    done
}

# start_nutcracker NAME CONFIG: checks the config, starts the proxy with its
# stats on a free port, waits for every listen address; sets STARTED_PID.
start_nutcracker() {
    local name=$1 conf=$2 stats listen
    "$(tool nutcracker)" -t -c "$conf" >"$WORK/$name.conftest.log" 2>&1 ||
        { cat "$WORK/$name.conftest.log" >&2; return 1; }
    stats=$("$CHECK" free-ports 1)
    "$(tool nutcracker)" -c "$conf" -a 127.0.0.1 -s "$stats" -o "$WORK/$name.log" -v 5 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    for listen in $(sed -n 's/^ *listen: *//p' "$conf"); do
        "$CHECK" wait "$listen"
    done
}

# stop PID: SIGTERM, then waits for it.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# server_args LINE...: "--server LINE" pairs, NUL-separated (for mapfile -d '').
server_args() {
    for line in "$@"; do
        printf -- '--server\0%s\0' "$line"
    done
}

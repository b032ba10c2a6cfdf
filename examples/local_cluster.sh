#!/usr/bin/env bash
# Starts a 3-node Granary cluster on this machine: one embedded store shared
# by all three (--store), one data directory each, node A founding the
# cluster and B and C joining it with a token A makes. Loads the sample
# catalog (examples/catalog.jsonl) through the admin API, prints `granary
# status` and the admin token, then waits; ctrl-c stops all three
# gracefully.
#
#   examples/local_cluster.sh            # data under ./local-cluster
#   GRANARY_CLUSTER_DIR=/tmp/c examples/local_cluster.sh
#   GRANARY_BIN=path/to/granary examples/local_cluster.sh   # no build
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${GRANARY_CLUSTER_DIR:-./local-cluster}"
mkdir -p "$dir"
if [ -n "${GRANARY_BIN:-}" ]; then
    bin=$GRANARY_BIN
else
    cargo build --release --quiet
    bin=./target/release/granary
fi

# The admin API's token: yours, or a fresh random one.
if [ -z "${GRANARY_ADMIN_TOKEN:-}" ]; then
    GRANARY_ADMIN_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
fi
export GRANARY_ADMIN_TOKEN

pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

# The three nodes share this machine's cores: each runs its share of
# them (--threads; a node alone on a machine runs one thread per core).
threads=$(( ($(nproc 2>/dev/null || echo 2) + 2) / 3 ))

# start NAME HTTP GRPC [--join SEED]: runs a node and waits for its ready line.
start() {
    local name=$1 http=$2 grpc=$3
    shift 3
    "$bin" serve --data-dir "$dir/$name" --store "$dir/events.db" \
        --http "127.0.0.1:$http" --grpc "127.0.0.1:$grpc" --threads "$threads" "$@" \
        > "$dir/$name.out" 2> "$dir/$name.log" &
    pids+=($!)
    for _ in $(seq 1 100); do
        if grep -q '^granary ready' "$dir/$name.out" 2>/dev/null; then
            echo "node $name: $(grep '^granary ready' "$dir/$name.out")"
            return
        fi
        sleep 0.1
    done
    echo "node $name did not start; see $dir/$name.log" >&2
    exit 1
}

start a 8081 7071
# Members speak mutual TLS; a new node shows a join token made on a member.
token=$("$bin" token create --node 127.0.0.1:7071 --data-dir "$dir/a" --ttl 10m)
start b 8082 7072 --join 127.0.0.1:7071 --token "$token"
start c 8083 7073 --join 127.0.0.1:7071 --token "$token"

# Joining takes a moment after a node is up: wait (10 s at most) until A
# sees three live members, then show its view.
live_peers() {
    "$bin" status --node 127.0.0.1:7071 --data-dir "$dir/a" 2>/dev/null |
        grep -c '^[0-9a-f]\{64\} .* yes ' || true
}
for _ in $(seq 1 100); do
    [ "$(live_peers)" = 3 ] && break
    sleep 0.1
done
"$bin" catalog import examples/catalog.jsonl --url http://127.0.0.1:8081
echo
"$bin" status --node 127.0.0.1:7071 --data-dir "$dir/a"
echo
echo "admin token: $GRANARY_ADMIN_TOKEN"
echo "HTTP on 127.0.0.1:8081, :8082, :8083; logs in $dir. ctrl-c stops the cluster."
echo "dashboard: http://127.0.0.1:8081/dashboard; metrics: http://127.0.0.1:8081/metrics"
wait

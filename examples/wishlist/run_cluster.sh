#!/usr/bin/env bash
# Starts three wishlist nodes as one Granary cluster on this machine: one
# embedded store shared by all three, one data directory each, node A
# founding the cluster, B and C joining it with a token A makes. Prints
# the cluster's status, then waits; ctrl-c (or SIGTERM) stops all three.
#
#   examples/wishlist/run_cluster.sh                 # data under ./wishlist-cluster
#   WISHLIST_DIR=/tmp/w examples/wishlist/run_cluster.sh
#   WISHLIST_BIN=path/to/wishlist examples/wishlist/run_cluster.sh   # no build
#   WISHLIST_HTTP_BASE=9080 WISHLIST_GRPC_BASE=9070 …   # ports base+1..base+3
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${WISHLIST_DIR:-./wishlist-cluster}"
http_base="${WISHLIST_HTTP_BASE:-9080}"
grpc_base="${WISHLIST_GRPC_BASE:-9070}"
mkdir -p "$dir"
if [ -n "${WISHLIST_BIN:-}" ]; then
    bin=$WISHLIST_BIN
else
    cargo build --release --quiet -p wishlist
    bin=./target/release/wishlist
fi

pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

# start NAME N [--join SEED …]: runs node N and waits for its ready line.
start() {
    local name=$1 n=$2
    shift 2
    "$bin" serve --data-dir "$dir/$name" --store "$dir/events.db" \
        --http "127.0.0.1:$((http_base + n))" --grpc "127.0.0.1:$((grpc_base + n))" "$@" \
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

seed="127.0.0.1:$((grpc_base + 1))"
start a 1
token=$("$bin" token create --node "$seed" --data-dir "$dir/a" --ttl 10m)
start b 2 --join "$seed" --token "$token"
start c 3 --join "$seed" --token "$token"

# Wait (10 s at most) until A sees three live members, then show its view.
live_peers() {
    "$bin" status --node "$seed" --data-dir "$dir/a" 2>/dev/null |
        grep -c '^[0-9a-f]\{64\} .* yes ' || true
}
for _ in $(seq 1 100); do
    [ "$(live_peers)" = 3 ] && break
    sleep 0.1
done
echo
"$bin" status --node "$seed" --data-dir "$dir/a"
echo
echo "wishlists on http://127.0.0.1:$((http_base + 1)), :$((http_base + 2)), :$((http_base + 3)); logs in $dir. ctrl-c stops the cluster."
wait

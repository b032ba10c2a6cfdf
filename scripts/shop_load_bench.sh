#!/usr/bin/env bash
# The shop's mix of requests (`granary load`: carts created, three items
# added, read, checked out) against three release-build members on one
# embedded store (examples/local_cluster.sh), sent three ways in turn,
# ROUNDS times:
#
#   spread  round the members, as a load balancer without cart affinity
#           sends them (two in three of a cart's requests forwarded)
#   follow  the same, each cart's requests then sent where a forwarded
#           answer's Granary-Owner said the cart lives
#   one     every request to one member (it creates, so owns, every cart)
#
#   scripts/shop_load_bench.sh                    # 3 rounds of 20 s each
#   ROUNDS=1 DURATION=10s CARTS=200 scripts/shop_load_bench.sh
#
# Prints one line per run and each way's medians; the tool shares the
# machine's cores with the members.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-20s}
carts=${CARTS:-200}
cargo build --release --quiet
bin=./target/release/granary
dir=$(mktemp -d)
GRANARY_ADMIN_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export GRANARY_ADMIN_TOKEN
GRANARY_BIN=$bin GRANARY_CLUSTER_DIR=$dir/cluster examples/local_cluster.sh \
    > "$dir/cluster.out" 2>&1 &
cluster=$!
finish() {
    kill -TERM "$cluster" 2>/dev/null || true
    wait "$cluster" 2>/dev/null || true
    rm -rf "$dir"
}
trap finish EXIT INT TERM
for _ in $(seq 1 300); do
    grep -q '^admin token' "$dir/cluster.out" && break
    kill -0 "$cluster" 2>/dev/null || { cat "$dir/cluster.out" >&2; exit 1; }
    sleep 0.1
done
grep -q '^admin token' "$dir/cluster.out" || { echo "the cluster did not start" >&2; exit 1; }

members=(--node http://127.0.0.1:8081 --node http://127.0.0.1:8082 --node http://127.0.0.1:8083)
for round in $(seq 1 "$rounds"); do
    for way in spread follow one; do
        case $way in
            spread) args=("${members[@]}") ;;
            follow) args=("${members[@]}" --follow-owner) ;;
            one) args=(--node http://127.0.0.1:8081) ;;
        esac
        "$bin" load "${args[@]}" --carts "$carts" --duration "$duration" --json \
            > "$dir/$way-$round.json"
        python3 - "$way" "$round" "$dir/$way-$round.json" <<'EOF'
import json, sys
way, round_, path = sys.argv[1:]
r = json.load(open(path))
print(f"round {round_} {way:<6} {r['per_second']:8.0f} requests/s  {r['checkouts']:6} checkouts  "
      f"{r['forwarded']:6} forwarded of {r['requests']}  p50 {r['all']['p50_ms']:.2f} ms  "
      f"p99 {r['all']['p99_ms']:.2f} ms  p99 add {r['ops']['add']['p99_ms']:.2f} ms  failed {r['failed']}")
EOF
    done
done
python3 - "$dir" "$rounds" <<'EOF'
import json, statistics, sys
dir_, rounds = sys.argv[1], int(sys.argv[2])
rate = {way: [json.load(open(f"{dir_}/{way}-{n}.json"))["per_second"] for n in range(1, rounds + 1)]
        for way in ("spread", "follow", "one")}
ratios = lambda a, b: [x / y for x, y in zip(rate[a], rate[b])]
print(f"medians: spread {statistics.median(rate['spread']):.0f}/s, follow {statistics.median(rate['follow']):.0f}/s, "
      f"one member {statistics.median(rate['one']):.0f}/s; per round follow/spread "
      + ", ".join(f"{x:.2f}" for x in ratios("follow", "spread"))
      + "; follow/one " + ", ".join(f"{x:.2f}" for x in ratios("follow", "one")))
EOF

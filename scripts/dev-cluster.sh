#!/usr/bin/env bash
# A whole Cartable cluster on this machine: one coordinator and six nodes in
# three sites over two regions, all on loopback, the sample lesson published
# with three copies. Prints the lesson's URLs and the commands to look around;
# stops everything it started on Ctrl-C. Data goes to ./cartable-dev (made afresh
# each run).
#
# Settings (environment):
#   DATA_DIR           the cluster's folder [./cartable-dev]
#   COORDINATOR_HTTPS  the coordinator's HTTPS address [127.0.0.1:7443]; the nodes
#                      and every QUIC endpoint take free ports
#   CARTABLE_PROFILE   the cargo profile to build and run [release]; `dev` builds faster
#   CARGO_TARGET_DIR   honoured, as cargo does
set -euo pipefail
dir="${DATA_DIR:-./cartable-dev}"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd) # before the cd below: DATA_DIR may be relative to the caller
cd "$(dirname "$0")/.."

profile="${CARTABLE_PROFILE:-release}"
cargo build --profile "$profile" -q -p cartable-node -p cartable-coordinator -p cartable-cli
# Where cargo put them: CARGO_TARGET_DIR, a build.target-dir setting, or ./target.
target=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ "$profile" = dev ] && bin=$target/debug || bin=$target/$profile
https="${COORDINATOR_HTTPS:-127.0.0.1:7443}"
rm -rf "$dir"
mkdir -p "$dir"

# Every daemon started, so that an interrupt at any point stops them all.
pids=()
cleanup() {
    trap - EXIT INT TERM
    if [ ${#pids[@]} -gt 0 ]; then
        kill "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# Starts a daemon logging to $1.log, records its pid and prints its listening
# line. Never call it inside $(...): the pid would be lost with the subshell.
start() {
    local name=$1
    shift
    "$@" >"$dir/$name.out" 2>"$dir/$name.log" &
    pids+=($!)
    for _ in $(seq 1 300); do
        if [ -s "$dir/$name.out" ]; then
            head -n 1 "$dir/$name.out"
            return
        fi
        sleep 0.1
    done
    echo "error: $name did not start; see $dir/$name.log" >&2
    exit 1
}

cat >"$dir/coordinator.toml" <<EOF
heartbeat_ms = 1000
down_after_ms = 5000
repair_delay_secs = 30
EOF
start coordinator "$bin/cartable-coordinator" --data-dir "$dir/coordinator" \
    --config "$dir/coordinator.toml" serve --https "$https" --quic 127.0.0.1:0
export CARTABLE_COORDINATOR="https://$https"
export CARTABLE_TOKEN
CARTABLE_TOKEN=$(cat "$dir/coordinator/admin-token")
export CARTABLE_CA_CERT="$dir/coordinator/tls/cert.pem"

places="nord/lille nord/lille nord/amiens nord/amiens sud/nice sud/nice"
i=1
for place in $places; do
    token=$("$bin/cartable" token create --region "${place%/*}" --site "${place#*/}")
    "$bin/cartable-node" --data-dir "$dir/node$i" join "$token" --capacity 1GB >/dev/null 2>&1
    start "node$i" "$bin/cartable-node" --data-dir "$dir/node$i" serve \
        --https 127.0.0.1:0 --quic 127.0.0.1:0 >/dev/null
    i=$((i + 1))
done
for _ in $(seq 1 100); do
    up=$("$bin/cartable" nodes --json | grep -c '"state": "up"' || true)
    [ "$up" -eq 6 ] && break
    sleep 0.2
done
"$bin/cartable" nodes

echo
"$bin/cartable" publish examples/lessons/fractions --replicas 3 --name fractions --wait
echo
echo "The sample lesson, through the coordinator (it redirects to a node holding a copy):"
echo "  https://$https/n/fractions/"
echo "Both the coordinator and the nodes use self-signed certificates: the browser asks"
echo "to accept each once. Look around from another terminal with the same settings:"
echo "  export CARTABLE_COORDINATOR=$CARTABLE_COORDINATOR CARTABLE_CA_CERT=$CARTABLE_CA_CERT"
echo "  export CARTABLE_TOKEN=\$(cat $dir/coordinator/admin-token)"
echo "  $bin/cartable status; $bin/cartable bundles; $bin/cartable bundle show <id>"
echo "Logs are in $dir/*.log. Ctrl-C stops the cluster."
wait

#!/usr/bin/env bash
# Browsers' redirects at the coordinator while an operator's changes are
# written to a slow disk: `/n/fractions/` asked 400 times a second for 20 s
# (h2load, 4 connections), beside about 7 join tokens made a second through
# the admin API, with every write and sync of the coordinator's process made
# 20 ms slower (strace's fault injection), as a school's spinning disk would.
# Needs the local cluster running (./scripts/dev-cluster.sh, from the repo root)
# and root for strace. See benches/README.md, "Coordinator".
set -euo pipefail

usage() {
    echo "usage: benches/coordinator/redirects-beside-admin.sh [--help]"
    echo "  env: DATA_DIR (./cartable-dev) COORDINATOR_HTTPS (127.0.0.1:7443) DELAY_US (20000) SECS (20)"
}
[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
(($# == 0)) || { usage >&2; exit 2; }

dir=$(realpath -m -- "${DATA_DIR:-./cartable-dev}")
https=${COORDINATOR_HTTPS:-127.0.0.1:7443}
delay=${DELAY_US:-20000}
secs=${SECS:-20}
for tool in strace h2load curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install strace nghttp2-client curl)" >&2; exit 1; }
done
token_file=$dir/coordinator/admin-token
[[ -s $token_file ]] || { echo "no $token_file: start ./scripts/dev-cluster.sh first" >&2; exit 1; }
pid=$(pgrep -f -- "cartable-coordinator --data-dir $dir/coordinator " | head -n 1 || true)
[[ -n $pid ]] || { echo "no cartable-coordinator running on $dir/coordinator" >&2; exit 1; }
url=https://$https/n/fractions/
status=$(curl -ks -o /dev/null -w '%{http_code}' "$url")
[[ $status == 302 ]] || { echo "$url answered $status, not 302" >&2; exit 1; }

work=$(mktemp -d)
tracer=
changes=
cleanup() {
    [[ -z $tracer ]] || kill "$tracer" 2>/dev/null || true
    [[ -z $changes ]] || kill "$changes" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf -- "$work"
}
trap cleanup EXIT

strace -f -qq -e trace=fsync,fdatasync,pwrite64 \
    -e inject=fsync,fdatasync,pwrite64:delay_exit="$delay" -p "$pid" -o "$work/strace" &
tracer=$!
sleep 1

admin_token=$(cat "$token_file")
(
    end=$((SECONDS + secs))
    while ((SECONDS < end)); do
        curl -ks -o /dev/null -w '%{time_total}\n' -X POST \
            -H "Authorization: Bearer $admin_token" \
            -d '{"region":"nord","site":"lille","expires_secs":60}' \
            "https://$https/api/tokens"
        sleep 0.1
    done >"$work/admin"
) &
changes=$!

h2load -t1 -c4 -m1 --rps=100 -D "$secs" --log-file="$work/redirects" "$url" >"$work/h2load" 2>&1
wait "$changes" || true
changes=

pct() { # file column scale -> "n=… p50=… p99=… max=…" in ms
    awk -v c="$2" -v s="$3" '$0 != "" { print $c * s }' "$1" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "n=0"; exit }
            printf "n=%d p50=%.2fms p99=%.2fms max=%.2fms\n", NR, v[int(NR * 0.5) + (NR == 1)], v[int(NR * 0.99) + (NR < 100)], v[NR] }'
}
awk '$2 == 302' "$work/redirects" >"$work/redirects.302"
echo "coordinator pid $pid, every fsync/fdatasync/pwrite64 +${delay} us, ${secs} s"
grep -E '^status codes' "$work/h2load"
echo "redirects (302): $(pct "$work/redirects.302" 3 0.001)"
echo "admin changes:   $(pct "$work/admin" 1 1000)"

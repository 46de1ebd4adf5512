#!/usr/bin/env bash
# Cold reads beside hot browsers: browsers read a hot 16 KiB file over HTTP/2
# at a set rate while a crawler asks for small files the node has not read
# since its start and the kernel no longer caches (their pages dropped), so
# each is read from the disk, a disk held to a school server's pace (a blkio
# cgroup's read IOPS limit). Measured: the hot browsers' latency with and
# without the crawl, for one or two node builds, rounds interleaved. Needs
# root (the cgroup). See benches/README.md, "Cold reads beside hot browsers".
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benches/cold-reads/run.sh NODE [NODE2]

  NODE, NODE2   node binaries to compare (rounds alternate between them)

environment (defaults):
  ROUNDS     rounds per binary and case          (3)
  SECS       seconds measured per round          (8)
  HOT_RPS    hot requests per second, per connection, 32 connections (300)
  COLD_RPS   cold files asked per second by the crawler (100)
  FILES      cold files of 4 KiB                 (2000)
  BUNDLES    lessons they are spread over, each a bundle whose manifest the
             node reads from the disk at its first request (1)
  DISK_IOPS  reads a second the node's disk allows, as a spinning disk
             does (200); 0 = the disk as it is
  DIR        where the node's data folder goes: a disk, not tmpfs
             (a folder under /var/tmp)
EOF
}

source "$(dirname "$0")/../nodes.sh"
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
HOT_RPS=${HOT_RPS:-300}
COLD_RPS=${COLD_RPS:-100}
FILES=${FILES:-2000}
BUNDLES=${BUNDLES:-1}
DISK_IOPS=${DISK_IOPS:-200}
DIR=${DIR:-/var/tmp}
for v in ROUNDS SECS HOT_RPS COLD_RPS FILES BUNDLES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $v must be a positive integer" >&2; exit 2; }
done
[[ $DISK_IOPS =~ ^[0-9]+$ ]] || { echo "run.sh: DISK_IOPS must be a number" >&2; exit 2; }
# Each round restarts the node (its memory empty) and drops the files' pages:
# the same files are cold again, but within a round none may be read twice.
(((SECS + 1) * COLD_RPS <= FILES)) ||
    { echo "run.sh: FILES ($FILES) must cover (SECS + 1) x COLD_RPS, or files are read warm" >&2; exit 2; }
command -v h2load >/dev/null || { echo "run.sh: h2load missing (apt-get install nghttp2-client)" >&2; exit 2; }

log() { printf '[cold] %s\n' "$*" >&2; }

WORK=$(mktemp -d "$DIR/cartable-cold.XXXXXX")
NODE_PID=
CGROUP=
cleanup() {
    if [[ -n $NODE_PID ]]; then
        kill "$NODE_PID" 2>/dev/null || true
        wait "$NODE_PID" 2>/dev/null || true
    fi
    [[ -z $CGROUP ]] || rmdir "$CGROUP" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $(stat -f -c %T "$WORK") == tmpfs ]]; then
    echo "run.sh: $DIR is tmpfs, where nothing is ever read from a disk: set DIR" >&2
    exit 2
fi

# A group whose reads from the disk under $WORK are held to DISK_IOPS a
# second: cgroup v1's blkio, or v2's io controller.
slow_disk() {
    local dev disk majmin
    dev=$(findmnt -no SOURCE --target "$WORK")
    disk=$(lsblk -no PKNAME "$dev" 2>/dev/null | head -n 1)
    majmin=$(lsblk -dno MAJ:MIN "/dev/${disk:-${dev#/dev/}}" | tr -d ' ')
    [[ $majmin =~ ^[0-9]+:[0-9]+$ ]] || { echo "run.sh: no block device under $WORK ($dev)" >&2; exit 2; }
    if [[ -d /sys/fs/cgroup/blkio ]]; then
        CGROUP=/sys/fs/cgroup/blkio/cartable-cold-$$
        mkdir "$CGROUP"
        echo "$majmin $DISK_IOPS" >"$CGROUP/blkio.throttle.read_iops_device"
    elif grep -qw io /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        echo +io >/sys/fs/cgroup/cgroup.subtree_control
        CGROUP=/sys/fs/cgroup/cartable-cold-$$
        mkdir "$CGROUP"
        echo "$majmin riops=$DISK_IOPS" >"$CGROUP/io.max"
    else
        echo "run.sh: no blkio or io cgroup controller to slow the disk (or set DISK_IOPS=0)" >&2
        exit 2
    fi
    log "the node's reads from $dev ($majmin) held to $DISK_IOPS a second ($CGROUP)"
}
if ((DISK_IOPS > 0)); then
    ((EUID == 0)) || { echo "run.sh: slowing the disk needs root (or set DISK_IOPS=0)" >&2; exit 2; }
    slow_disk
fi

# The node on the last core, the load on the others.
LAST=$(($(nproc) - 1))
((LAST >= 1)) || { echo "run.sh: needs 2 cores" >&2; exit 2; }
NODE_PIN=(taskset -c "$LAST")
LOAD_PIN=(taskset -c "0-$((LAST - 1))")

((BUNDLES <= FILES)) || { echo "run.sh: BUNDLES must not exceed FILES" >&2; exit 2; }
log "lessons: $FILES files of 4 KiB over $BUNDLES bundle(s), and hot.bin (16 KiB)"
mkdir -p "$WORK/hot" "$WORK/lessons"
head -c 16384 /dev/urandom >"$WORK/hot/hot.bin"
python3 - "$WORK/lessons" "$FILES" "$BUNDLES" <<'PY'
import os, sys
d, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    os.makedirs(f"{d}/{i % b:05}/cold", exist_ok=True)
    with open(f"{d}/{i % b:05}/cold/{i:06}.bin", "wb") as f:
        f.write(os.urandom(4096))
PY
printf '[[connections.networks]]\ncidr = "127.0.0.0/8"\nexempt = true\n' >"$WORK/node.toml"
add() { # folder -> bundle id
    local id
    id=$("${NODES[0]}" add --data-dir "$WORK/node" "$1" 2>/dev/null | head -n 1)
    [[ $id =~ ^[0-9a-f]{64}$ ]] || { echo "run.sh: add $1 did not print a bundle id" >&2; exit 1; }
    echo "$id"
}
BUNDLE=$(add "$WORK/hot")
# The crawler's paths, file i in bundle i mod BUNDLES: a new bundle at each
# request while there are bundles not yet asked for.
: >"$WORK/bundles"
for ((k = 0; k < BUNDLES; k++)); do
    id=$(add "$WORK/lessons/$(printf %05d "$k")")
    echo "$id" >>"$WORK/bundles"
done
python3 - "$WORK/bundles" "$FILES" >"$WORK/cold.paths" <<'PY'
import sys
ids, n = open(sys.argv[1]).read().split(), int(sys.argv[2])
for i in range(n):
    print(f"/b/{ids[i % len(ids)]}/cold/{i:06}.bin")
PY

start_node() { # binary
    : >"$WORK/node.out"
    "${NODE_PIN[@]}" "$1" --config "$WORK/node.toml" serve --data-dir "$WORK/node" \
        --https 127.0.0.1:0 --quic 127.0.0.1:0 >"$WORK/node.out" 2>"$WORK/node.err" &
    NODE_PID=$!
    [[ -z $CGROUP ]] || echo "$NODE_PID" >"$CGROUP/cgroup.procs"
    local i
    for ((i = 0; i < 100; i++)); do
        URL=$(awk '/^cartable-node listening / { sub("https=", "", $3); print $3 }' "$WORK/node.out")
        [[ -n $URL ]] && return 0
        kill -0 "$NODE_PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$WORK/node.err" >&2
    echo "run.sh: node did not start" >&2
    exit 1
}

stop_node() {
    kill "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
    NODE_PID=
}

# Every blob's pages out of the page cache: they are clean (the store synced
# them), so the next read of each goes to the disk.
drop_pages() {
    python3 - "$WORK/node" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        path = os.path.join(root, f)
        if not os.path.isfile(path):
            continue
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
PY
}

# Latencies of the requests started within the measured window, in ms.
percentiles() { # log-file -> "p50 p99 p99.9 count"
    python3 - "$1" <<'PY'
import sys
d = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.split()[1] == "200")
bad = sum(1 for l in open(sys.argv[1]) if l.split()[1] != "200")
n = len(d)
q = lambda p: d[min(n - 1, int(p * n))] / 1000
print(f"{q(0.5):.3f} {q(0.99):.3f} {q(0.999):.3f} {n} {bad}")
PY
}

RESULTS=$WORK/results
: >"$RESULTS"
one_round() { # round binary-index crawl(0|1)
    local round=$1 b=$2 crawl=$3 bin=${NODES[$2]}
    start_node "$bin"
    drop_pages
    local hot="$URL/b/$BUNDLE/hot.bin"
    curl -ksf -o /dev/null "$hot" || { echo "run.sh: node does not serve $hot" >&2; exit 1; }
    rm -f "$WORK/hot.log" "$WORK/cold.log"
    local crawler=
    if ((crawl)); then
        sed "s|^|$URL|" "$WORK/cold.paths" >"$WORK/cold.uris"
        "${LOAD_PIN[@]}" h2load -c1 -m4 --rps="$COLD_RPS" -D "$SECS" -i "$WORK/cold.uris" \
            --log-file="$WORK/cold.log" >"$WORK/cold.out" 2>&1 &
        crawler=$!
    fi
    # In the background and waited for: h2load exits cleanly on Ctrl-C, and
    # bash runs no trap for a foreground command that did.
    "${LOAD_PIN[@]}" h2load -c32 -m1 --rps="$HOT_RPS" -D "$SECS" \
        --log-file="$WORK/hot.log" "$hot" >"$WORK/hot.out" 2>&1 &
    wait $!
    local cold="- - - 0 0"
    if [[ -n $crawler ]]; then
        wait "$crawler"
        cold=$(percentiles "$WORK/cold.log")
    fi
    stop_node
    local hotp
    hotp=$(percentiles "$WORK/hot.log")
    printf '%s %s %s %s %s\n' "$round" "$b" "$crawl" "$hotp" "$cold" >>"$RESULTS"
    printf '  round %d  node %d  crawl %d  hot p50/p99/p99.9 ms %s  cold %s\n' \
        "$round" "$b" "$crawl" "$hotp" "$cold" >&2
}

log "measuring: $ROUNDS rounds x ${#NODES[@]} build(s) x (alone, beside the crawl), ${SECS}s each"
for ((r = 1; r <= ROUNDS; r++)); do
    for b in "${!NODES[@]}"; do
        one_round "$r" "$b" 0
        one_round "$r" "$b" 1
    done
done

echo
echo "hot browsers: $((32 * HOT_RPS)) req/s over 32 HTTP/2 connections; crawler: $COLD_RPS cold 4 KiB files/s over $BUNDLES bundle(s); disk: ${DISK_IOPS/#0/unlimited} reads/s"
for b in "${!NODES[@]}"; do
    echo "node $b: ${NODES[$b]}"
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"{'node':>4} {'crawl':>5} {'hot p99 ms (rounds)':<28} {'median':>7} {'hot p99.9 median':>17} {'hot answered':>13} {'cold p50/p99 median':>20}")
for b in sorted({r[1] for r in rows}):
    for c in ("0", "1"):
        sel = [r for r in rows if r[1] == b and r[2] == c]
        p99 = [float(r[4]) for r in sel]
        p999 = [float(r[5]) for r in sel]
        cold = ""
        if c == "1":
            cold = f"{statistics.median(float(r[8]) for r in sel):.3f}/{statistics.median(float(r[9]) for r in sel):.3f}"
        answered = statistics.median(int(r[6]) for r in sel)
        print(f"{b:>4} {c:>5} {', '.join(f'{x:.2f}' for x in p99):<28} {statistics.median(p99):>7.3f} {statistics.median(p999):>17.3f} {answered:>13.0f} {cold:>20}")
PY

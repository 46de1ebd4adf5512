#!/usr/bin/env bash
# Copies beside a node's own maintenance: how long node A takes to copy a
# small lesson from node B (`cartable-node fetch`, through A's daemon) alone,
# while `cartable-node check` re-verifies a large lesson A holds, while
# `cartable-node add` copies a large lesson into A, and while `cartable-node
# rm` removes the large lesson. A copy, an upload or a
# browser's fetch through a node commits under the store's write lock, so a
# maintenance step that holds that lock while it reads holds them all up.
# Rounds alternate between the cases and the builds. See benches/README.md,
# "Copies beside check and add".
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: benches/maintenance/run.sh NODE [NODE2]

  NODE, NODE2   node binaries to compare (rounds alternate between them)

environment (defaults):
  ROUNDS   rounds per binary and case                      (3)
  GIB      size of the large lesson, GiB                    (6)
  FILES    files of 4 KiB in the small lesson, copied       (20)
  LEAD     seconds the maintenance runs before the copy     (0.2)
  DIR      where the data folders go: a disk, not tmpfs     (/var/tmp)
USAGE
}

source "$(dirname "$0")/../nodes.sh"
ROUNDS=${ROUNDS:-3}
GIB=${GIB:-6}
FILES=${FILES:-20}
LEAD=${LEAD:-0.2}
DIR=${DIR:-/var/tmp}
for v in ROUNDS GIB FILES; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $v must be a positive integer" >&2; exit 2; }
done
[[ $LEAD =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "run.sh: LEAD must be a number of seconds" >&2; exit 2; }

log() { printf '[maintenance] %s\n' "$*" >&2; }
((EUID == 0)) ||
    log "not root: the page cache cannot be dropped, so a check reads from memory, not the disk"

WORK=$(mktemp -d "$DIR/cartable-maint.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The large lesson (added to A before each round, and added again as the
# "add" case: a second folder of other bytes) and the small one B serves.
log "writing two lessons of $GIB GiB and one of $FILES small files under $WORK"
mkdir -p "$WORK/large" "$WORK/large2" "$WORK/small"
head -c "$((GIB << 30))" /dev/zero | tr '\0' 'a' > "$WORK/large/video.bin"
head -c "$((GIB << 30))" /dev/zero | tr '\0' 'b' > "$WORK/large2/video.bin"
for i in $(seq 1 "$FILES"); do
    head -c 4096 /dev/urandom > "$WORK/small/page$i.html"
done

# Starts `serve` on a data folder; its listening line's fields go to LINE.
LINE=
serve() { # NODE DATA [ARGS...]
    local node=$1 data=$2
    shift 2
    "$node" --data-dir "$data" serve --https 127.0.0.1:0 --quic 127.0.0.1:0 "$@" \
        > "$data.out" 2> "$data.log" &
    PIDS+=($!)
    local i
    for i in $(seq 1 200); do
        LINE=$(sed -n 's/^cartable-node listening //p' "$data.out")
        [[ -z $LINE ]] || return 0
        sleep 0.05
    done
    echo "run.sh: $node printed no listening line; its log: $data.log" >&2
    exit 1
}

field() { tr ' ' '\n' <<< "$1" | sed -n "s/^$2=//p"; }

# Seconds the command takes.
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" > /dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
}

declare -A TIMES
round() { # NODE INDEX CASE
    local node=$1 n=$2 case=$3
    local a="$WORK/a" b="$WORK/b"
    rm -rf "$a" "$b" "$a".* "$b".*
    "$node" --data-dir "$a" add "$WORK/large" > /dev/null 2>&1
    local large
    large=$("$node" --data-dir "$a" bundles --json | sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' | head -1)
    "$node" --data-dir "$b" add "$WORK/small" > /dev/null 2>&1
    local small
    small=$("$node" --data-dir "$b" bundles --json | sed -n 's/.*"id": *"\([0-9a-f]*\)".*/\1/p' | head -1)
    serve "$node" "$a"
    local a_peer from
    a_peer="$(field "$LINE" id)@$(field "$LINE" quic)"
    serve "$node" "$b" --peer "$a_peer"
    from="$(field "$LINE" id)@$(field "$LINE" quic)"
    # The large lesson's pages leave the cache: a check reads the disk.
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    local busy=
    case $case in
        alone) ;;
        check) "$node" --data-dir "$a" check > /dev/null & busy=$! ;;
        add) "$node" --data-dir "$a" add "$WORK/large2" > /dev/null 2>&1 & busy=$! ;;
        rm) "$node" --data-dir "$a" rm "$large" > /dev/null 2>&1 & busy=$! ;;
    esac
    [[ -z $busy ]] || PIDS+=("$busy")
    sleep "$LEAD"
    local t
    t=$(timed "$node" --data-dir "$a" fetch "$small" --from "$from")
    "$node" --data-dir "$a" bundles --json | grep -q "$small" ||
        { echo "run.sh: the copy did not land on A; its log: $a.log" >&2; exit 1; }
    local busy_left=no
    if [[ -n $busy ]]; then
        kill -0 "$busy" 2>/dev/null && busy_left=yes
        wait "$busy"
    fi
    log "node $n, $case: copy ${t}s (the $case still running when it landed: $busy_left)"
    TIMES[$n,$case]+="$t "
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
spread() { tr ' ' '\n' | grep . | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }

for r in $(seq 1 "$ROUNDS"); do
    for case in alone check add rm; do
        for n in "${!NODES[@]}"; do
            round "${NODES[$n]}" "$n" "$case"
        done
    done
done

printf '\n%-8s %-7s %-18s %s\n' node case "copy s (median)" "spread"
for n in "${!NODES[@]}"; do
    for case in alone check add rm; do
        printf '%-8s %-7s %-18s %s\n' "$n" "$case" \
            "$(median <<< "${TIMES[$n,$case]}")" "$(spread <<< "${TIMES[$n,$case]}")"
    done
done
for n in "${!NODES[@]}"; do echo "node $n = ${NODES[$n]}"; done

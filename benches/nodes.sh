# Sourced by the bench scripts that compare node builds: reads `-h` or one or
# two node binaries from the script's arguments into NODES. The script
# defines `usage` first.
[[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
(($# >= 1 && $# <= 2)) || { usage >&2; exit 2; }
NODES=("$@")
for n in "${NODES[@]}"; do
    [[ -x $n ]] || { echo "$(basename "$0"): no executable node at '$n'" >&2; exit 2; }
done

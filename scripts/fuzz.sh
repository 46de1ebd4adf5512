#!/usr/bin/env bash
# Runs every fuzz target, one after the other, for SECONDS each (default 60)
# or FUZZ_RUNS executions (default 10 million), whichever comes first:
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Each target starts from its kept corpus (proto/fuzz/corpus/NAME,
# node/fuzz/corpus/NAME or coordinator/fuzz/corpus/NAME) and writes what it finds to a scratch corpus under
# target/fuzz-corpus/NAME, so the repository's corpora stay small; a crash
# stops the run and leaves its input in FUZZ_DIR/artifacts/NAME/. The last
# line libFuzzer prints for each target (executions, cov, ft) is summed up at
# the end. For the long run the issue asks for: scripts/fuzz.sh 1800.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-60}
shift || true
only=("$@")

summary=()
for fuzz_dir in proto/fuzz node/fuzz coordinator/fuzz; do
  for target in $(cd "$fuzz_dir" && cargo +nightly fuzz list); do
    if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " =~ " $target " ]]; then
      continue
    fi
    scratch="$root/target/fuzz-corpus/$target"
    mkdir -p "$scratch"
    log="$root/target/fuzz-corpus/$target.log"
    echo "== $target ($fuzz_dir), ${seconds}s"
    (cd "$fuzz_dir" && cargo +nightly fuzz build "$target") 2>"$log" \
      || { tail -n 40 "$log"; echo "$target: the fuzz target does not build"; exit 1; }
    (cd "$fuzz_dir" && cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
      -max_total_time="$seconds" -runs="${FUZZ_RUNS:-10000000}" -rss_limit_mb=2048 -print_final_stats=1) 2>>"$log" \
      || { tail -n 40 "$log"; echo "$target: CRASH, input in $fuzz_dir/artifacts/$target/"; exit 1; }
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    # What the run found that covers new edges joins the kept corpus (edges
    # only, not hit counts: a few hundred small files per target, replayed by
    # the ordinary tests; review them with `git status` and commit them).
    (cd "$fuzz_dir" && cargo +nightly fuzz run "$target" "corpus/$target" "$scratch" -- \
      -merge=1 -use_counters=0) 2>>"$log"
    summary+=("$target: $last")
  done
done
printf '%s\n' "${summary[@]}"

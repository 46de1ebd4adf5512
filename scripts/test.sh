#!/usr/bin/env bash
# Runs every test, on a fresh machine too: installs what the tests need
# (Debian's chromium for the browser tests, systemd-analyze and, without root,
# fakeroot for the packaging test) when it is missing, builds the
# binaries the integration tests start, then runs the whole workspace's tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ "$(id -u)" -eq 0 ] || command -v fakeroot >/dev/null || need+=(fakeroot)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

#!/usr/bin/env bash
# Serves the sample lesson from one node on https://127.0.0.1:8443 (or $HTTPS),
# with the defaults a first run gets: data in ./cartable-data, a self-signed
# certificate made on first start. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p cartable-node
node=target/release/cartable-node
data="${DATA_DIR:-./cartable-data}"
https="${HTTPS:-127.0.0.1:8443}"

id=$("$node" --data-dir "$data" add examples/lessons/fractions | head -n 1)
echo "sample lesson: bundle $id"
echo "open https://${https}/b/${id}/ (self-signed certificate: accept the browser's warning)"
exec "$node" --data-dir "$data" serve --https "$https"

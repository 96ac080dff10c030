#!/usr/bin/env bash
# Prints the cargo target directory: a persistent cache outside the clone when it is writable
# (so rdkafka and RocksDB are compiled once per machine), else ./target.
set -euo pipefail
if [ -n "${CARGO_TARGET_DIR:-}" ]; then echo "$CARGO_TARGET_DIR"; exit 0; fi
cache=${HERALD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/herald}/target
if mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; then
  echo "$cache"
else
  echo "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target"
fi

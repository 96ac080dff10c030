#!/usr/bin/env bash
# Installs (once) Toxiproxy's server, the TCP proxy the chaos suite puts between Herald and its
# broker to inject network faults, from the Go module proxy into <repo>/.local/bin.
# Idempotent: with the binary present it does nothing. It needs Go (GO, default `go` on PATH or
# /usr/local/go/bin/go); without Go, or if the module cannot be fetched, it says so and exits 1
# (the chaos suite then runs without network faults and says so).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
version=v2.5.0 # the newest the module proxy serves; from it on, the server is cmd/server
bin=$repo/.local/bin
target=$bin/toxiproxy-server
stamp=$bin/.toxiproxy-$version

if [ -x "$target" ] && [ -f "$stamp" ]; then
  echo "toxiproxy: $target ($version) present"
  exit 0
fi
go=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
if ! [ -x "$go" ]; then
  echo "toxiproxy: Go not found (set GO); the chaos suite runs without network faults" >&2
  exit 1
fi
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
echo "toxiproxy: installing github.com/Shopify/toxiproxy/v2/cmd/server@$version into $bin"
if ! GOBIN=$build GOFLAGS=-buildvcs=false "$go" install "github.com/Shopify/toxiproxy/v2/cmd/server@$version"; then
  echo "toxiproxy: go install failed; the chaos suite runs without network faults" >&2
  exit 1
fi
mkdir -p "$bin"
mv "$build/server" "$target"
touch "$stamp"
echo "toxiproxy: installed $target"

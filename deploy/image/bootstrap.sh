#!/usr/bin/env bash
# Installs what `make image` needs when no Docker daemon is running: buildah (builds the
# Dockerfile), podman (runs the image for the smoke test) and debootstrap (makes the local
# stand-ins for the base images when Docker Hub is out of reach). Idempotent: installs only
# what is missing. Called by `make image` only, never by `make test` or `make demo`.
set -euo pipefail

missing=()
for tool in buildah:buildah podman:podman debootstrap:debootstrap; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
((${#missing[@]} == 0)) && exit 0

if ! command -v apt-get >/dev/null; then
    echo "bootstrap: install ${missing[*]} with your package manager" >&2
    exit 1
fi
sudo=()
((EUID == 0)) || sudo=(sudo)
echo "bootstrap: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" uidmap >&2

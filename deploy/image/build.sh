#!/usr/bin/env bash
# `make image`: builds the Dockerfile as $HERALD_IMAGE (default herald:dev) from the context
# directory $1 (default: the repository), then runs the smoke test (smoke.sh). With a Docker
# daemon this is `docker build`; without one, buildah (installed by bootstrap.sh), with chroot
# isolation and, when Docker Hub is out of reach, the local stand-ins for the base images
# (stand-ins.sh). Prints the build time and the image size.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
context=${1:-$(cd "$here/../.." && pwd)}
image=${HERALD_IMAGE:-herald:dev}
start=$SECONDS

if docker info >/dev/null 2>&1; then
    docker build -t "$image" "$context"
else
    "$here/bootstrap.sh"
    bases=()
    # Docker Hub answers /v2/ with 401 when it is reachable at all.
    if ! curl -s -m 10 -o /dev/null https://registry-1.docker.io/v2/; then
        echo "image: Docker Hub is out of reach, building on local stand-ins" >&2
        read -ra bases < <("$here/stand-ins.sh")
    fi
    # The cold release build takes the machine's cores for half an hour: a low priority
    # keeps the rest of the machine responsive. Layers cache the apt steps between builds;
    # the Dockerfile's cache mounts keep the crates and cargo's target directory.
    nice -n 15 buildah bud --isolation chroot --layers --force-rm "${bases[@]}" \
        -f "$context/Dockerfile" -t "$image" "$context"
fi

echo "image: built $image in $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s" >&2
"$here/smoke.sh" "$image"

#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's base images, for a machine that reaches Debian's package
# mirror but not Docker Hub. Prints the two `--build-arg`s that select them:
#   RUNTIME_IMAGE=localhost/debian-bookworm:slim   a debootstrapped Debian bookworm (minbase)
#   RUST_IMAGE=localhost/rust-bookworm:<rustc>     that + a C toolchain + this machine's Rust,
#                                                  trusting this machine's local CAs too
# Each is made once and reused (the builder is keyed on the Rust version). Needs root (buildah
# mounts the container's root file system) and buildah and debootstrap (bootstrap.sh).
set -euo pipefail

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/debian-bookworm:slim
log() { echo "stand-ins: $*" >&2; }
exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# A working container from $1, removed with its mount however this script ends.
container=
cleanup() { [[ -z $container ]] || buildah rm "$container" >/dev/null; }
trap cleanup EXIT

if ! exists "$base"; then
    log "debootstrapping Debian bookworm into $base"
    container=$(buildah from scratch)
    root=$(buildah mount "$container")
    debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
    # The same sources and the same "no documentation" policy as debian:bookworm-slim.
    cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    rm -rf "$root"/usr/share/{man,info,locale}/* "$root"/var/cache/apt/*.bin \
        "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    buildah umount "$container" >/dev/null
    buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        "$container"
    buildah commit --quiet --rm "$container" "$base" >/dev/null
    container=
fi

sysroot=$(rustc --print sysroot)
version=$(rustc --version | cut -d' ' -f2)
builder=localhost/rust-bookworm:$version
if ! exists "$builder"; then
    log "making $builder from $base and $sysroot"
    container=$(buildah from "$base")
    # What rust:1-bookworm (buildpack-deps) brings that a Rust build uses.
    buildah run --isolation chroot "$container" -- sh -c 'apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             ca-certificates curl git gcc g++ libc6-dev make pkg-config procps >/dev/null \
        && rm -rf /var/lib/apt/lists/*' >&2
    root=$(buildah mount "$container")
    # The toolchain without its documentation (share/), where rust:1 keeps it.
    mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo"
    tar -C "$sysroot" --exclude=./share -cf - . | tar -C "$root/usr/local/rust" -xf -
    # The machine's own CAs (a TLS-inspecting proxy in front of crates.io, say), so cargo
    # downloads in the build as it does here.
    [[ ! -d /usr/local/share/ca-certificates ]] ||
        cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    buildah umount "$container" >/dev/null
    buildah run --isolation chroot "$container" -- update-ca-certificates >&2
    buildah config --env CARGO_HOME=/usr/local/cargo \
        --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        "$container"
    buildah commit --quiet --rm "$container" "$builder" >/dev/null
    container=
fi

echo "--build-arg RUNTIME_IMAGE=$base --build-arg RUST_IMAGE=$builder"

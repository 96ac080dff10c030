# Herald's container image: one `herald` binary for every role (engine, send, api, sim, topics).
# Build: `make image` (deploy/image/build.sh: `docker build -t herald:dev .`, or buildah where no
# Docker daemon runs). Run as the non-root user `herald` (10001);
# state lives under /var/lib/herald (state/, sender/, sim/ exist owned by herald, so a named
# volume mounted on one starts writable), configuration under /etc/herald.

# The base images; a build without Docker Hub passes local stand-ins (deploy/image/stand-ins.sh).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build: the release binary (librdkafka, RocksDB, zstd and lz4 built from source) ---
# The cache mounts keep cargo's downloaded crates and its target directory from one build to
# the next (under /var/tmp/buildah-cache with buildah), so a rebuild compiles only what changed:
# `COPY . .` makes the layers below it new on every source change, the caches stay.
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=herald-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=herald-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin herald \
 && install -D --strip target/release/herald /out/herald

# --- run: a slim Debian with the shared libraries the binary links (OpenSSL, zlib, libstdc++) ---
FROM ${RUNTIME_IMAGE} AS run
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 herald \
 && useradd --system --uid 10001 --gid herald --home-dir /var/lib/herald --shell /usr/sbin/nologin herald \
 && install -d -o herald -g herald /var/lib/herald /var/lib/herald/state /var/lib/herald/sender \
      /var/lib/herald/sim /etc/herald
COPY --from=build /out/herald /usr/local/bin/herald
WORKDIR /usr/share/herald
# Default files the subcommands look for relative to the working directory.
COPY topologies ./topologies
COPY examples ./examples
USER 10001:10001
ENV HERALD_BROKERS=kafka:9092
EXPOSE 9100 9101 8088 8443
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["--help"]

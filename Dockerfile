# Herald's container image: one `herald` binary for every role (engine, send, api, sim, topics).
# Build: `make image` (deploy/image/build.sh: `docker build -t herald:dev .`, or buildah where no
# Docker daemon runs). Run as the non-root user `herald` (10001);
# state lives under /var/lib/herald (state/, sender/, sim/ exist owned by herald, so a named
# volume mounted on one starts writable), configuration under /etc/herald.

# The base images; a build without Docker Hub passes local stand-ins (deploy/image/stand-ins.sh).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build: the release binary, with librdkafka built from source (cmake) ---
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev libcurl4-openssl-dev \
      libssl-dev libsasl2-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin herald \
 && install -D target/release/herald /out/herald

# --- run: a slim Debian with the shared libraries the binary links ---
FROM ${RUNTIME_IMAGE} AS run
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 libcurl4 zlib1g \
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

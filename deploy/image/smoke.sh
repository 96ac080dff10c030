#!/usr/bin/env bash
# Smoke test of a built image ($1, default herald:dev): its entrypoint answers `--version` and
# `engine --help`, it runs as uid 10001 in /usr/share/herald with a writable state directory and
# its topology; `herald api` pointed at a closed port answers /readyz with 503 and its reason;
# and, when a broker answers on 127.0.0.1:9092, `herald topics apply` then `topics delete` of a
# one-topic topology (prefix smoke-<pid>-) work over the host network.
# Runs the image with `docker run` where a Docker daemon runs, else with `buildah run`.
set -euo pipefail

image=${1:-herald:dev}
prefix=smoke-$$-
fail() { echo "smoke: $*" >&2; exit 1; }

# A one-topic topology for the broker check, mounted at /smoke.
dir=$(mktemp -d)
chmod 755 "$dir"
printf '%s\n' 'replication_factor = 1' '[[topic]]' 'name = "herald.events"' \
    'description = "image smoke test"' 'partitions = 1' 'cleanup_policy = "delete"' \
    >"$dir/topology.toml"
chmod 644 "$dir/topology.toml"
printf '%s\n' 'read smoke smoke-read-token-0123456789' >"$dir/tokens"
chmod 644 "$dir/tokens"
container=
topics_made=
api=
# The background `run` is a subshell: stop its child (buildah or docker, which pass the signal
# on to the container's process), then it.
stop_api() {
    pkill -TERM -P "$api" 2>/dev/null || true
    kill "$api" 2>/dev/null || true
    wait "$api" 2>/dev/null || true
}
cleanup() {
    [[ -z $api ]] || stop_api
    [[ -z $topics_made ]] || topics delete --prefix "$prefix" >/dev/null || true
    rm -rf "$dir"
    [[ -z $container ]] || buildah rm "$container" >/dev/null
}
trap cleanup EXIT

if docker info >/dev/null 2>&1; then
    run() { docker run --rm --network host -v "$dir:/smoke:ro" "$image" "$@"; }
    shell() { docker run --rm --entrypoint sh "$image" -c "$1"; }
    size=$(docker image inspect --format '{{.Size}}' "$image")
else
    # buildah runs a command, not the entrypoint: take it from the image's configuration.
    container=$(buildah from --pull=never "$image")
    read -ra entrypoint < <(buildah inspect --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$container"; echo)
    run() {
        buildah run --isolation chroot --network host -v "$dir:/smoke:ro" "$container" -- \
            "${entrypoint[@]}" "$@"
    }
    shell() { buildah run --isolation chroot "$container" -- sh -c "$1"; }
    size=$(buildah images --format '{{.Size}}' "$image" | head -1)
fi

run --version | grep -q '^herald ' || fail "--version does not name herald"
run engine --help | grep -q -- '--app-id' || fail "engine --help lacks --app-id"
[[ $(shell 'id -u') == 10001 ]] || fail "does not run as uid 10001"
[[ $(shell 'pwd') == /usr/share/herald ]] || fail "the working directory is not /usr/share/herald"
shell 'test -w /var/lib/herald/state && test -r topologies/default.toml' ||
    fail "the state directory is not writable or the topology is missing"

# The API's readiness from the image: nothing listens on port 1, so it waits for its brokers
# and says so (the port is the smoke test's pid's, in the dynamic range).
port=$((49152 + $$ % 16000))
run api --brokers 127.0.0.1:1 --tokens /smoke/tokens --listen 127.0.0.1:0 \
    --metrics-addr "127.0.0.1:$port" >"$dir/api.log" 2>&1 &
api=$!
readyz=
for _ in $(seq 60); do
    readyz=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$port/readyz" || true)
    [[ $readyz == *unreachable*' 503' ]] && break
    sleep 0.5
done
stop_api
api=
[[ $readyz == '{"ready":false,"reason":"brokers 127.0.0.1:1 unreachable: '*' 503' ]] ||
    fail "herald api's /readyz without brokers said: $readyz ($(tail -3 "$dir/api.log"))"
echo "smoke: herald api's /readyz without brokers: ${readyz% *} (503)" >&2

if timeout 2 bash -c '</dev/tcp/127.0.0.1/9092' 2>/dev/null; then
    topics() { run topics --brokers 127.0.0.1:9092 "$@"; }
    topics_made=1
    created=$(topics apply --topology /smoke/topology.toml --prefix "$prefix")
    deleted=$(topics delete --prefix "$prefix")
    topics_made=
    [[ $created == "created  ${prefix}herald.events" ]] || fail "topics apply said: $created"
    [[ $deleted == "deleted 1 topics starting with $prefix" ]] || fail "topics delete said: $deleted"
    echo "smoke: topics apply and delete on 127.0.0.1:9092 from the image" >&2
else
    echo "smoke: no broker on 127.0.0.1:9092, broker check skipped" >&2
fi
echo "smoke: $image passes ($size)" >&2

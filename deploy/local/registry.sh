#!/usr/bin/env bash
# Local schema registry for the `confluent` ingest format: Apicurio Registry (in-memory storage),
# whose Confluent-compatible API is served under /apis/ccompat/v7.
#
#   deploy/local/registry.sh up      install (once), start, wait until it answers
#   deploy/local/registry.sh down    stop it
#   deploy/local/registry.sh status  print whether it runs
#   deploy/local/registry.sh url     print the Confluent-compatible base URL
#
# Environment: REGISTRY_PORT (default 8081), REGISTRY_MANAGEMENT_PORT (default 9081),
# HERALD_LOCAL (default <repo>/.local), JAVA_HOME (used when it is Java 21 or later; otherwise a
# JDK 21+ under /usr/lib/jvm). `up` is idempotent: with a running registry it does nothing.
# Storage is in memory: a restart forgets every schema (clients register theirs again).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
local_dir=${HERALD_LOCAL:-$repo/.local}
home=$local_dir/registry
app=$home/app
log=$home/registry.log
pidfile=$home/registry.pid
port=${REGISTRY_PORT:-8081}
management_port=${REGISTRY_MANAGEMENT_PORT:-9081}
version=$(sed -n 's:.*<apicurio.version>\(.*\)</apicurio.version>.*:\1:p' "$here/registry/pom.xml")
url=http://127.0.0.1:$port/apis/ccompat/v7

log_info() { echo "registry: $*"; }

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  curl -fsS -o /dev/null --max-time 2 "$url/subjects" 2>/dev/null
}

# Major version of the java binary $1 (0 when it does not run).
java_major() {
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1 | grep . || echo 0
}

find_java() {
  local candidate
  for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} /usr/lib/jvm/temurin-*/bin/java /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
    [ -x "$candidate" ] || continue
    if [ "$(java_major "$candidate")" -ge 21 ]; then
      echo "$candidate"
      return 0
    fi
  done
  echo "registry: no Java 21 or later found (set JAVA_HOME); Apicurio Registry $version needs it" >&2
  return 1
}

install() {
  local stamp=$app/.installed-$version
  [ -f "$stamp" ] && return 0
  command -v mvn >/dev/null || { echo "registry: mvn not found; run deploy/local/bootstrap.sh" >&2; exit 1; }
  log_info "installing Apicurio Registry $version from Maven Central into $app"
  rm -rf "$app" && mkdir -p "$app"
  (cd "$here/registry" && mvn -q -B dependency:unpack -Dregistry.dir="$app")
  [ -f "$app/quarkus-run.jar" ] || { echo "registry: $app/quarkus-run.jar missing after unpacking" >&2; exit 1; }
  touch "$stamp"
}

up() {
  if running; then
    log_info "already running (pid $(cat "$pidfile")); $url; log: $log"
    return 0
  fi
  if answers; then
    log_info "something already answers at $url; using it"
    return 0
  fi
  install
  local java
  java=$(find_java)
  mkdir -p "$home"
  log_info "starting on 127.0.0.1:$port with $java; log: $log"
  (cd "$app" && nohup "$java" -Xms128m -Xmx512m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$management_port" \
    -jar quarkus-run.jar >>"$log" 2>&1 &
    echo $! >"$pidfile")
  for _ in $(seq 1 120); do
    if ! running; then
      echo "registry: exited during start-up; last lines of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    if answers; then
      log_info "ready at $url"
      return 0
    fi
    sleep 0.5
  done
  echo "registry: did not answer within 60 s; see $log" >&2
  exit 1
}

# shellcheck source=service.sh
. "$here/service.sh"

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then log_info "running (pid $(cat "$pidfile")); $url"; else log_info "not running"; exit 3; fi ;;
  url) echo "$url" ;;
  *) echo "usage: $0 up|down|status|url" >&2; exit 2 ;;
esac

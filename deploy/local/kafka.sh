#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker + controller) for the demo and the tests.
#
#   deploy/local/kafka.sh up      install (once), format (once), start, wait until it answers
#   deploy/local/kafka.sh down    stop it
#   deploy/local/kafka.sh status  print whether it runs
#
# Environment: KAFKA_PORT (default 9092), KAFKA_CONTROLLER_PORT (default KAFKA_PORT+1),
# HERALD_LOCAL (default <repo>/.local), KAFKA_DIR (this broker's config, data, log and pid file;
# default <HERALD_LOCAL>/kafka: a second broker on another port needs its own),
# KAFKA_ADVERTISED_PORT (default KAFKA_PORT: the port clients are told to connect to, e.g. a
# proxy's). The installed jars are shared. `up` is idempotent: with a running broker it does nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
local_dir=${HERALD_LOCAL:-$repo/.local}
lib=$local_dir/kafka/lib
home=${KAFKA_DIR:-$local_dir/kafka}
data=$home/data
log=$home/kafka.log
pidfile=$home/kafka.pid
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
advertised_port=${KAFKA_ADVERTISED_PORT:-$port}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")

log_info() { echo "kafka: $*"; }

running() { # the pid file's process is this broker (a stale file's pid may be another's now)
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$(cat "$pidfile")/cmdline" 2>/dev/null | grep -q -- "kafka\.Kafka .*/$(basename "$home")/server\.properties"
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
}

install() {
  local stamp=$lib/.installed-$kafka_version
  [ -f "$stamp" ] && return 0
  log_info "installing Apache Kafka $kafka_version from Maven Central into $lib"
  rm -rf "$lib" && mkdir -p "$lib"
  (cd "$here" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib")
  touch "$stamp"
}

write_config() {
  mkdir -p "$home"
  cat >"$home/server.properties" <<CFG
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$advertised_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
CFG
  cat >"$home/log4j2.properties" <<'CFG'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = info
logger.org.name = org.apache.kafka
logger.org.level = warn
CFG
}

java_cmd() {
  java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$home/log4j2.properties" -cp "$lib/*" "$@"
}

format() {
  [ -f "$data/meta.properties" ] && return 0
  log_info "formatting KRaft storage in $data"
  local cluster_id
  cluster_id=$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$home/server.properties" >>"$log" 2>&1
}

up() {
  if running; then
    log_info "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port; log: $log"
    return 0
  fi
  if answers; then
    log_info "something already answers on 127.0.0.1:$port; using it"
    return 0
  fi
  command -v java >/dev/null || { echo "kafka: java not found; run deploy/local/bootstrap.sh" >&2; exit 1; }
  install
  write_config
  format
  log_info "starting broker on 127.0.0.1:$port; log: $log"
  # Only this start's lines are searched (the log keeps every earlier run's).
  local log_start
  log_start=$(stat -c %s "$log" 2>/dev/null || echo 0)
  nohup java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$lib/*" kafka.Kafka "$home/server.properties" >>"$log" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidfile"
  # A broker holding many partitions (leftovers of earlier test runs: `herald topics delete
  # --prefix it-`) loads them all before it answers, which can take minutes.
  local timeout=${KAFKA_START_TIMEOUT:-300} waited=0
  while [ "$waited" -lt $((timeout * 2)) ]; do
    # Liveness of the child itself: until nohup has exec'd java its cmdline is still this
    # shell's, so `running` (which matches the broker's cmdline) would call it dead.
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka: broker exited during start-up; last lines of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    # `grep -c` reads to the end: `grep -q` would stop early, and under pipefail the SIGPIPE
    # of `tail` would fail the test though the line is there.
    if answers && [ "$(tail -c +"$((log_start + 1))" "$log" | grep -c "Kafka Server started" || true)" -gt 0 ]; then
      log_info "ready on 127.0.0.1:$port"
      return 0
    fi
    sleep 0.5
    waited=$((waited + 1))
    if [ $((waited % 60)) -eq 0 ]; then
      log_info "still starting after $((waited / 2)) s ($(find "$data" -maxdepth 1 -mindepth 1 -type d 2>/dev/null | wc -l) partition directories)"
    fi
  done
  echo "kafka: broker did not answer within $timeout s (KAFKA_START_TIMEOUT); see $log" >&2
  exit 1
}

# shellcheck source=service.sh
. "$here/service.sh"

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running; then log_info "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else log_info "not running"; exit 3; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

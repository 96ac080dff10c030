#!/usr/bin/env bash
# Stops what `make demo` started: the simulator, engine and sender, then (unless
# --processes-only) the local Kafka broker.
set -euo pipefail
dir=.local/demo
for pidfile in "$dir"/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  # A pid file outlives its process, and the pid may now be another's (the chaos suite's sender
  # got this SIGTERM once): only a process started with this directory in its arguments is ours.
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $(basename "$pidfile" .pid)"
  fi
  rm -f "$pidfile"
done
if [ "${1:-}" != "--processes-only" ]; then
  deploy/local/kafka.sh down
fi

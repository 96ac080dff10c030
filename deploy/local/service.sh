# Shared helpers of the local services' scripts (kafka.sh, registry.sh); sourced, not run.
# The sourcing script defines `running` (whether its pid file's process is its service),
# `log_info` and `pidfile`.

# Stops the service: TERM, then up to 30 s for it to exit, then KILL; removes the pid file.
down() {
  if ! running; then
    log_info "not running"
    rm -f "$pidfile"
    return 0
  fi
  local pid
  pid=$(cat "$pidfile")
  log_info "stopping pid $pid"
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log_info "stopped"; return 0; }
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  log_info "killed after 30 s"
}

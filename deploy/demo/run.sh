#!/usr/bin/env bash
# The closed loop of `make demo`: the provider simulator with a population of simulated users
# across timezones, the engine (user, campaign and app stages), a sender, the sample campaigns
# of examples/ and synthetic app traffic; then per-campaign, per-variant stats every few
# seconds until the A/B test declares its winner; the admin API serves the live dashboard
# meanwhile (its URL and a read token are printed). `make demo-down` stops what it started.
set -euo pipefail
herald=${HERALD:?set HERALD to the herald binary}
dir=.local/demo
users=${DEMO_USERS:-100000}
port=${DEMO_SIM_PORT:-8443}
api_port=${DEMO_API_PORT:-8088}
mkdir -p "$dir"
deploy/demo/down.sh --processes-only
run=$(date +%s)
prefix="demo-$run-"

start() { # name command…: runs in the background, logging to $dir/name.log
  local name=$1
  shift
  "$@" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

wait_for() { # name pattern seconds
  local name=$1 pattern=$2 seconds=$3
  for _ in $(seq "$seconds"); do
    grep -q "$pattern" "$dir/$name.log" 2>/dev/null && return 0
    if ! kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then break; fi
    sleep 1
  done
  echo "demo: $name did not start; the end of $dir/$name.log:" >&2
  tail -20 "$dir/$name.log" >&2
  exit 1
}

echo "== topics (this run's prefix: $prefix)"
"$herald" topics apply --prefix "$prefix" | sed 's/^/   /'

echo "== simulator: APNs, FCM v1 and OAuth over HTTP/2 + TLS on 127.0.0.1:$port, $users users"
start sim "$herald" sim --listen "127.0.0.1:$port" --dir "$dir/sim" \
  --population "$users" --topic-prefix "$prefix" --view-rate 0.6 \
  --click-rate A=0.04 --click-rate B=0.15 \
  --fault unavailable=0.02 --fault unregistered=0.01 --fault latency_ms=2..15
wait_for sim "simulator serving" 300

cat >"$dir/senders.yaml" <<YAML
apps:
  shop:
    apns:
      topic: com.example.shop
      key_file: $dir/sim/apns-key.p8
      key_id: DEMOKEY123
      team_id: DEMOTEAM12
      endpoint: https://127.0.0.1:$port
    fcm:
      service_account_file: $dir/sim/fcm-service-account.json
      endpoint: https://127.0.0.1:$port
    ca_file: $dir/sim/sim-ca.pem
YAML

echo "== engine and sender"
start engine "$herald" engine --app-config examples/apps.yaml --app-id "demo-$run" \
  --topic-prefix "$prefix" --state-dir "$dir/engine-$run" --instance-id demo
start sender "$herald" send --config "$dir/senders.yaml" --topic-prefix "$prefix" \
  --group "demo-$run-senders" --instance-id demo --state-dir "$dir/sender-$run"
wait_for engine "tasks restored" 120
wait_for sender "sender started" 60

echo "== admin API and dashboard on http://127.0.0.1:$api_port/"
token() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32; }
read_token="read-$(token)"
admin_token="admin-$(token)"
(umask 077 && printf 'read demo-viewer %s\nadmin demo-admin %s\n' "$read_token" "$admin_token" >"$dir/api-tokens")
start api "$herald" api --listen "127.0.0.1:$api_port" --tokens "$dir/api-tokens" --topic-prefix "$prefix"
for _ in $(seq 60); do
  timeout 1 bash -c "</dev/tcp/127.0.0.1/$api_port" 2>/dev/null && break
  kill -0 "$(cat "$dir/api.pid")" 2>/dev/null || break
  sleep 1
done
if ! timeout 1 bash -c "</dev/tcp/127.0.0.1/$api_port" 2>/dev/null; then
  echo "demo: the API did not start; the end of $dir/api.log:" >&2
  tail -20 "$dir/api.log" >&2
  exit 1
fi
echo "   dashboard:  http://127.0.0.1:$api_port/"
echo "   read token: $read_token"
echo "   (an admin token, for pause/resume/stop, is in $dir/api-tokens)"

echo "== campaigns from examples/"
"$herald" campaign apply --topic "${prefix}herald.campaigns" examples/campaigns/*.yaml | sed 's/^/   /'

echo "== synthetic app traffic (event times 11 minutes back, so 10-minute inaction windows have passed)"
"$herald" traffic --users "$users" --topic-prefix "$prefix" --rate 200 --seconds 20

echo "== stats every 5 s until the A/B winner is declared"
for _ in $(seq 60); do
  sleep 5
  echo "--- $(date +%T)"
  for campaign in cart-abandon-ab welcome-coupon; do
    "$herald" campaign stats "$campaign" --topic "${prefix}herald.stats" 2>/dev/null | sed 's/^/   /' || true
  done
  if winner=$("$herald" consume --topic "${prefix}herald.campaign-events" --idle-secs 1 2>/dev/null |
    grep WINNER_DECLARED); then
    echo "== winner declared:"
    echo "$winner" | sed 's/^/   /'
    echo "Everything is still running (logs in $dir); 'make demo-down' stops it."
    echo "Dashboard: http://127.0.0.1:$api_port/#campaign=cart-abandon-ab (read token: $read_token)"
    exit 0
  fi
done
echo "demo: no winner after 5 minutes; logs in $dir" >&2
exit 1

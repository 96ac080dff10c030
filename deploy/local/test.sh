#!/usr/bin/env bash
# Runs the whole test suite (what `make test` does after starting the broker and registry).
#
# Most of the suite's wall time is spent waiting on the broker, timers and killed processes, not
# on the CPU: the longest test binaries run side by side in lanes, each lane's binaries one after
# the other, every lane's output kept in its own log under .local/test-logs/. Every test binary
# still runs, and any failure fails the run (its log is printed). A binary not named below runs in
# the last lane, so a new test file needs no change here.
set -euo pipefail
cd "$(dirname "$0")/../.."

logs=.local/test-logs
rm -rf "$logs"
mkdir -p "$logs"

echo "--- building every test binary"
cargo test --workspace --no-run

# Lanes of the long test binaries (the first ones about 400, 350 and 190 + 270 s on their own;
# each lane's later ones 150-290 s), the rest in a fourth (about 700 s in a make test run): the
# slowest lane decides the suite's time.
lanes=(
  "senders runtime_exactly_once backlogs api"
  "engine_scale_out engine_live sharded_live review_s30"
  "chaos engine_fence review_fence review_s32 review_s31 sharded_ab_triggered_live"
)
named=" ${lanes[*]} "
# Every cargo call below selects the whole workspace, as the build above did: selecting one package
# (`-p`) unifies the dependencies' features differently, which builds and stores a second copy of
# every test binary (about 400 MB each). A name in both packages (`cli`) runs both.
rest=()
for name in $(basename -s .rs tests/*.rs engine/tests/*.rs | sort -u); do
  [[ $named == *" $name "* ]] || rest+=("--test" "$name")
done

run_lane() {
  local log=$1
  shift
  local started=$SECONDS status=0
  for target in "$@"; do
    echo "=== cargo test $target" >>"$log"
    # shellcheck disable=SC2086 # a target is one or more cargo arguments
    if ! cargo test --no-fail-fast $target >>"$log" 2>&1; then
      status=1
    fi
  done
  echo "lane $(basename "$log" .log): $((SECONDS - started)) s, $([[ $status == 0 ]] && echo passed || echo FAILED)"
  return $status
}

pids=()
logs_of=()
for i in "${!lanes[@]}"; do
  targets=()
  for name in ${lanes[$i]}; do targets+=("--workspace --test $name"); done
  run_lane "$logs/lane-$i.log" "${targets[@]}" &
  pids+=($!)
  logs_of+=("$logs/lane-$i.log")
done
run_lane "$logs/lane-rest.log" "--workspace --lib --bins ${rest[*]}" &
pids+=($!)
logs_of+=("$logs/lane-rest.log")

failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    failed=1
    echo "--- ${logs_of[$i]} (failed):"
    cat "${logs_of[$i]}"
  fi
done

# One summary over every binary: tests passed, failed and ignored.
grep -h '^test result:' "${logs_of[@]}" | awk '
  { passed += $4; failed += $6; ignored += $8 }
  END { printf "all test binaries: %d passed, %d failed, %d ignored\n", passed, failed, ignored }'
exit $failed

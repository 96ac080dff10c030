#!/usr/bin/env bash
# Installs the system packages Herald needs to build and test, only when missing.
# Idempotent: a second run with everything present does nothing. `bootstrap.sh chaos` adds Toxiproxy.
set -euo pipefail

packages=(cmake clang libclang-dev libcurl4-openssl-dev libssl-dev libsasl2-dev zlib1g-dev pkg-config maven openjdk-17-jre-headless nghttp2-client
  chromium chromium-driver # the dashboard's browser test (tests/dashboard_browser.rs)
  prometheus) # promtool: tests/deploy_manifests.rs checks and unit-tests the alert rules
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  echo "bootstrap: installing missing packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "bootstrap: system packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found; install Rust with rustup (https://rustup.rs) and re-run" >&2
  exit 1
fi

# `bootstrap.sh chaos`: also Toxiproxy (network faults of the chaos suite); optional, so a failed
# install is reported and the suite runs without it.
if [ "${1:-}" = chaos ]; then
  "$(dirname "${BASH_SOURCE[0]}")/toxiproxy.sh" || echo "bootstrap: toxiproxy not installed (see above)"
fi

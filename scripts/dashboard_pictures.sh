#!/usr/bin/env bash
# The README's dashboard pictures: runs the observability test's live loop (server + Prometheus + Pushgateway,
# PPO-Lag, a round, a swap) longer, with traffic throughout, then screenshots Prometheus's graph page for each
# dashboard area in headless Chromium (Debian package `chromium`, installed here when missing).
#   scripts/dashboard_pictures.sh [OUT_DIR]   (default docs/img/dashboards)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(realpath -m "${1:-docs/img/dashboards}")"
bash scripts/setup.sh
if ! command -v chromium > /dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium > /dev/null
fi
cargo build --release --workspace --bins
SAFELOOP_DASHBOARD_PICTURES="$OUT" cargo test --release --workspace --test observability -- --nocapture
ls -l "$OUT"

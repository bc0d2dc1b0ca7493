#!/usr/bin/env bash
# The one test command: installs what the tests need (idempotent), then runs every test.
# Tests run in release mode: the same build serves tests, the benchmark and the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins
bash scripts/build_models.sh
cargo test --release --workspace "$@"

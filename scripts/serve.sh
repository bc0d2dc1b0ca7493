#!/usr/bin/env bash
# The one serve command: fetches the default model if needed, builds, and serves it with the
# OpenAI-compatible API on http://127.0.0.1:8000 (flags pass through, see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet -p safeloop-serve
exec target/release/safeloop-serve "$@"

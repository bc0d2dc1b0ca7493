#!/usr/bin/env bash
# The one serve command: fetches the default model if needed, builds, and runs the policy.
# Until the HTTP server lands this is the interactive generator: type a prompt per line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release --quiet -p safeloop-serve -- generate "$@"

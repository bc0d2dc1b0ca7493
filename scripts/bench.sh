#!/usr/bin/env bash
# Engine benchmark on the default model (prints ratios against candle's stock ops, run in
# the same process). Extra arguments go to the benchmark, e.g. --new-tokens 128.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo bench -p safeloop-shared --bench engine -- "$@"

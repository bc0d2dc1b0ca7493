#!/usr/bin/env bash
# The one test command: installs what the tests need (idempotent), then runs every test.
# Tests run in release mode: the same build serves tests, the benchmark and the server.
# The CUDA compile check (scripts/check_cuda.sh: the `cuda` feature compiled and linked with nvcc from PyPI wheels,
# no GPU needed; ~20 CPU-minutes from scratch, mostly nvcc) runs at the lowest CPU priority beside the tests, in its
# own target folder, using the cores they leave idle while they wait on servers; its result is checked after them.
# SAFELOOP_SKIP_CUDA_CHECK=1 leaves it out (local iterations; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins
CUDA_PID=""
if [ -z "${SAFELOOP_SKIP_CUDA_CHECK:-}" ]; then
  mkdir -p target
  nice -n 19 bash scripts/check_cuda.sh >target/check_cuda.log 2>&1 &
  CUDA_PID=$!
fi
bash scripts/build_models.sh
status=0
cargo test --release --workspace "$@" || status=$?
if [ -n "$CUDA_PID" ]; then
  echo "test: waiting for the CUDA compile check (target/check_cuda.log)"
  if wait "$CUDA_PID"; then
    tail -n 1 target/check_cuda.log
  else
    tail -n 40 target/check_cuda.log
    echo "test: the CUDA compile check failed (target/check_cuda.log)" >&2
    status=1
  fi
fi
exit "$status"

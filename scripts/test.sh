#!/usr/bin/env bash
# The one test command: installs what the tests need (idempotent), then runs every test.
# Tests run in release mode: the same build serves tests, the benchmark and the server.
# SAFELOOP_CUDA_CHECK=1 also runs the CUDA compile check (scripts/check_cuda.sh: the `cuda` feature compiled and
# linked with nvcc from PyPI wheels, no GPU needed) at the lowest CPU priority beside the tests, in its own target
# folder, and checks its result after them. It is a slow check, not part of CI: ~20 CPU-minutes from scratch (most
# of it nvcc on candle's quantized-matmul kernels; the last CI run with it took 2,561 s on 2 cores), and safeloop has
# no CUDA-only code of its own (the feature turns on candle's CUDA backend); scripts/gpu_kit.sh builds the same
# targets whenever a GPU is lent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins
CUDA_PID=""
if [ -n "${SAFELOOP_CUDA_CHECK:-}" ]; then
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

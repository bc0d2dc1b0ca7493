#!/usr/bin/env bash
# The CUDA compile check (no GPU needed): compiles and links the `cuda` feature of safeloop-shared — candle's CUDA
# backend, its kernels (nvcc, compute capability $CUDA_COMPUTE_CAP, default 90) and safeloop's model and engine over
# it — as the two executables scripts/gpu_kit.sh carries to a GPU machine: the engine benchmark and the golden-logit
# tests. CUDA 13.0 comes from pinned PyPI wheels (scripts/setup_cuda.sh). Its own target folder (target/cuda), so it
# can run beside a CPU build or test run without waiting on target/'s lock. From scratch ~20 CPU-minutes (most of it
# nvcc on candle's quantized-matmul kernels); seconds when nothing changed.
#
#   bash scripts/check_cuda.sh [--message-format=json]   (extra arguments go to cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup_cuda.sh --env)"
CARGO_TARGET_DIR=target/cuda cargo test --release -p safeloop-shared --features cuda --bench engine \
  --test golden_model --no-run "$@"
echo "check_cuda: the cuda feature builds and links (nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), sm_$CUDA_COMPUTE_CAP)" >&2

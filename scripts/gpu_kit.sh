#!/usr/bin/env bash
# Builds, here, everything scripts/gpu_check.sh runs on a lent NVIDIA GPU machine (which has the driver, nvcc 13.0
# and PyTorch 2.11+cu130 but no Rust and no package registry), into the git-ignored .gpu/ (~25 MB: with the tracked
# files, under the 64 MiB a device call carries):
#   bin/engine.xz          the engine benchmark (shared/benches/engine.rs), `--features cuda`
#   bin/golden_model.xz    the golden-logit tests (shared/tests/golden_model.rs), `--features cuda`
#   bin/safeloop-train.xz  the trainer as CI builds it (CPU libtorch 2.11); there it runs on the machine's CUDA
#                       libtorch 2.11 (LD_LIBRARY_PATH), loading libtorch_cuda.so for --device cuda
#   golden/             the tiny golden models and their reference outputs (../shared/golden)
#   prompts.jsonl       64 PKU-SafeRLHF prompts (../shared/data) for one ppo-lag step
#   smollm2/            SmolLM2-135M-Instruct's config.json and tokenizer files, converted from the default GGUF; the
#                       weights (270 MB in bf16) are too big to carry, so gpu_check.sh makes random ones there — the
#                       speed of a forward pass does not depend on the values
# The CUDA builds are scripts/check_cuda.sh's (target/cuda; also `SAFELOOP_CUDA_CHECK=1 scripts/test.sh`): ~15 minutes on 2 cores the first time
# (nvcc on candle's kernels), seconds after.
#
#   bash scripts/gpu_kit.sh && <device run, carry .gpu>: bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KIT="${GPU_KIT:-.gpu}"
SHARED="${SAFELOOP_REFERENCE:-../shared}"
bash scripts/setup.sh >/dev/null

echo "gpu_kit: building the CUDA engine benchmark and golden tests (scripts/check_cuda.sh)" >&2
BUILD_JSON=target/gpu_kit-build.json
bash scripts/check_cuda.sh --message-format=json-render-diagnostics >"$BUILD_JSON"
exe() { # exe TARGET: the executable cargo built for that target
  python3 - "$BUILD_JSON" "$1" <<'PY'
import json, sys
msgs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print([m["executable"] for m in msgs if m.get("reason") == "compiler-artifact" and m.get("executable")
       and m["target"]["name"] == sys.argv[2]][-1])
PY
}
ENGINE=$(exe engine)
GOLDEN=$(exe golden_model)
echo "gpu_kit: building safeloop-train (CPU libtorch)" >&2
cargo build --release -q -p safeloop-train

rm -rf "$KIT" && mkdir -p "$KIT/bin" "$KIT/golden" "$KIT/smollm2"
# Stripped and xz-compressed (a CUDA executable is ~57 MB, mostly candle's kernels as PTX text; ~7.5 MB in xz).
for pair in "engine:$ENGINE" "golden_model:$GOLDEN" "safeloop-train:target/release/safeloop-train"; do
  strip -o "$KIT/bin/${pair%%:*}" "${pair#*:}"
  xz -T0 -6 "$KIT/bin/${pair%%:*}"
done
for m in llama-gqa llama-gqa-score qwen2-tied tokenizer; do cp -r "$SHARED/golden/$m" "$KIT/golden/"; done
head -n 64 "$SHARED/data/pku_saferlhf_train.jsonl" >"$KIT/prompts.jsonl"

# SmolLM2's config and tokenizer, as `safeloop-train convert` writes them from the GGUF (the weights are dropped).
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
target/release/safeloop-train convert --gguf assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out "$TMP/smollm2" >/dev/null
for f in "$TMP"/smollm2/*; do
  case "$f" in *.safetensors) ;; *) cp "$f" "$KIT/smollm2/" ;; esac
done
du -sh "$KIT" "$KIT"/* >&2

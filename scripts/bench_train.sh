#!/usr/bin/env bash
# Trainer benchmarks (not part of CI):
#  1. one PPO actor update in safeloop (tch) vs the same step in PyTorch 2.11 (scripts/bench_train_step.py), on the
#     tiny golden Llama and on SmolLM2-135M (dequantized), same threads, median of 10 steps; prints the ratio;
#  2. a short PPO-Lag run on the tiny model and on SmolLM2 with the time per iteration split into rollout /
#     scoring / training.
# PyTorch comes from a separate venv (.venv-bench, full `torch==2.11.0` from PyPI, ~5 GB with its CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p safeloop-train --quiet
T=target/release/safeloop-train
if ! .venv-bench/bin/python -c "import torch, safetensors.torch" 2>/dev/null; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet --disable-pip-version-check "torch==2.11.0" "safetensors==0.7.0" packaging numpy
fi
[ -d assets/smollm2/hf-f32 ] || $T convert --out assets/smollm2/hf-f32 >/dev/null
THREADS="${SAFELOOP_TRAIN_THREADS:-$(nproc)}"
export SAFELOOP_TRAIN_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
GOLDEN="${SAFELOOP_GOLDEN:-../shared/golden}"
echo "== one PPO actor update (forward + loss + backward + AdamW), $THREADS threads"
for spec in "$GOLDEN/llama-gqa 8 128" "assets/smollm2/hf-f32 4 128"; do
  set -- $spec
  ours=$($T bench-step --model "$1" --batch "$2" --seq "$3")
  theirs=$(.venv-bench/bin/python scripts/bench_train_step.py --model "$1" --batch "$2" --seq "$3")
  python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{a['model']}: batch {a['batch']}x{a['seq']}: safeloop {a['median_ms']:.1f} ms, {b['impl']} {b['median_ms']:.1f} ms"
      f" -> ratio {a['median_ms'] / b['median_ms']:.2f}x PyTorch time")
PY
done
echo "== PPO-Lag iteration split (rollout / scoring / training)"
P=../shared/data/pku_saferlhf_train.jsonl
$T ppo-lag --actor "$GOLDEN/llama-gqa" --reward-model token-fraction:4:256:10 --cost-model token-fraction:4:130:10:-2 \
  --prompts $P --out /tmp/safeloop-bench-tiny --max-steps 5 --prompt-batch-size 16 --max-new-tokens 32 --ignore-eos \
  2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print('tiny:', {k: round(r[k], 3) for k in ('mean_rollout_s','mean_scoring_s','mean_training_s','mean_sync_s')})"
if [ -d runs/cost/model ] && [ -d runs/reward/model ]; then
  $T ppo-lag --actor assets/smollm2/hf-f32 --reward-model runs/reward/model --cost-model runs/cost/model \
    --prompts $P --out /tmp/safeloop-bench-smol --max-steps 2 --prompt-batch-size 8 --max-new-tokens 64 --freeze-layers 24 \
    2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print('SmolLM2:', {k: round(r[k], 3) for k in ('mean_rollout_s','mean_scoring_s','mean_training_s','mean_sync_s')})"
fi
